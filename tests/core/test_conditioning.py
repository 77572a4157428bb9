"""Class conditioning by context: labels reach conditional nets, tiled for stacked batches; CFG."""

import pytest
import torch
from diffusers import UNet2DModel

from distill.core.conditioning import (
    LABELS,
    POOLED,
    PROMPT_MASK,
    PROMPTS,
    condition_for,
    condition_rows,
    conditioned,
    drop_labels,
    guided,
    labels_for,
    null_labels,
    num_classes_of,
    table_rows,
    table_size,
)
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel


def test_labels_reach_calls_of_their_batch_and_of_stacked_copies():
    labels = torch.tensor([3, 1])
    assert condition_for(torch.zeros(2, 5)) is None
    with conditioned(labels):
        assert torch.equal(labels_for(torch.zeros(2, 5)), labels)
        assert torch.equal(labels_for(torch.zeros(4, 5)), torch.tensor([3, 1, 3, 1]))  # torch.cat([x, x])
        with pytest.raises(ValueError, match="batch of 3 samples under a condition for 2"):
            condition_for(torch.zeros(3, 5))
        with conditioned(None):
            assert condition_for(torch.zeros(2, 5)) is None
        assert torch.equal(labels_for(torch.zeros(2, 5)), labels)
    prompts = torch.randn(2, 3, 4)
    with conditioned({PROMPTS: prompts}):  # prompt embeddings tile along the batch the same way
        torch.testing.assert_close(condition_for(torch.zeros(4, 5))[PROMPTS], torch.cat([prompts, prompts]))
        assert labels_for(torch.zeros(2, 5)) is None
    assert condition_for(torch.zeros(2, 5)) is None


def test_guidance_extrapolates_from_the_null_class():
    def velocity(x, s):  # a "network" whose velocity is its label
        return labels_for(x).float()[:, None].expand_as(x)

    x, s, null = torch.zeros(3, 2), torch.rand(3), {LABELS: torch.tensor([10])}
    with conditioned(torch.tensor([0, 1, 2])):
        out = guided(velocity, x, s, scale=3.0, null=null)  # null class = 10
    torch.testing.assert_close(out[:, 0], 10 + 3.0 * (torch.tensor([0.0, 1.0, 2.0]) - 10))
    assert guided(lambda x, s: x + 1, x, s, 3.0, null).eq(1).all()  # no condition: no guidance


def test_label_dropout_and_null_labels():
    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(10000, dtype=torch.long), 0.1, num_classes=10)
    assert set(dropped.unique().tolist()) == {0, 10} and abs((dropped == 10).double().mean().item() - 0.1) < 0.01
    assert null_labels(torch.zeros(2, 3), 7).tolist() == [7, 7]


@pytest.mark.parametrize(
    "net",
    [
        lambda: TimeMLP((2,), width=16, depth=1, num_classes=4),
        lambda: UNet(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, num_classes=4),
    ],
)
def test_conditional_nets_follow_the_labels_and_fall_back_to_the_null_class(net):
    torch.manual_seed(0)
    model = VelocityModel(net())
    assert num_classes_of(model) == 4
    x = torch.randn(2, *((2,) if isinstance(model.net, TimeMLP) else (1, 8, 8)))
    s = torch.rand(2)
    with torch.no_grad():
        plain = model(x, s)
        with conditioned(null_labels(x, 4)):
            torch.testing.assert_close(model(x, s), plain)
        with conditioned(torch.tensor([0, 0])):
            zero = model(x, s)
        with conditioned(torch.tensor([3, 3])):
            assert not torch.allclose(model(x, s), zero)


def test_diffusers_class_embeddings_count_their_null_class():
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        num_class_embeds=11,
    )
    assert num_classes_of(unet) == 10
    assert num_classes_of(VelocityModel(TimeMLP((2,), width=8, depth=1))) == 0


def test_a_guided_teacher_gives_the_cfg_velocity_to_every_caller():
    from distill.teachers import Teacher

    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=3))
    teacher = Teacher(model, (2,), guidance=2.5)
    x, s, labels = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad(), conditioned(labels):
        cond = model(x, s)
        with conditioned(null_labels(x, 3)):
            uncond = model(x, s)
        torch.testing.assert_close(teacher(x, s), uncond + 2.5 * (cond - uncond))
        teacher.guidance = 1.0
        torch.testing.assert_close(teacher(x, s), cond)


def test_prompt_tables_of_several_inputs_give_rows_that_tile_and_slice():
    """Text-to-image transformers condition on several tensors a prompt (embeddings, pooled, mask)."""
    table = {PROMPTS: torch.randn(5, 3, 4), POOLED: torch.randn(5, 2), PROMPT_MASK: torch.ones(5, 3)}
    assert table_size(table) == 5 and table_size(table[PROMPTS]) == 5
    rows = table_rows(table, torch.tensor([4, 0]))
    assert torch.equal(rows[POOLED], table[POOLED][[4, 0]])
    assert torch.equal(table_rows(table[PROMPTS], torch.tensor([1]))[PROMPTS], table[PROMPTS][[1]])  # a bare table
    with conditioned(rows):
        stacked = condition_for(torch.zeros(6, 1))  # three stacked copies of the batch
        assert stacked[PROMPT_MASK].shape == (6, 3) and torch.equal(stacked[POOLED][2:4], rows[POOLED])
        last = condition_rows(slice(1, None), 2)  # e.g. teacher samples replacing the batch's last row
        assert torch.equal(last[PROMPTS], table[PROMPTS][[0]])
    assert condition_rows(slice(1, None), 2) is None
