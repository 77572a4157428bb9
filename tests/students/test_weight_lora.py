"""LoRA on EDM's own layers (Linear, resampling Conv2d, EDM2's MPConv): zero change at start, only
adapters train, the base weights stay the teacher's tensors, and merging reproduces the adapted net."""

import pytest
import torch

from distill.export import has_lora, without_lora
from distill.students.flow_map import student_from_teacher
from distill.students.lora import add_lora, lora_parameter_names, share_frozen_weights
from distill.students.weight_lora import WeightLora, WeightLoraError
from distill.teachers.edm import EDMVelocity
from tests.teachers.edm_pickles import tiny_edm

# the noise mapping, block embeddings, attention, and the resampling convolutions of the down/up blocks
TARGETS = r".*(map_layer\d|emb_noise|\d+x\d+_\w+\.(affine|emb_linear|(attn_)?(qkv|proj))|\d+x\d+_(down|up)\.conv\w*)"


def edm_teacher(kind: str) -> EDMVelocity:
    net, _ = tiny_edm(kind, channels=3, resolution=8)
    return EDMVelocity(net).eval().requires_grad_(False)


def nudge_adapters(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("kind", ["song", "dhariwal", "edm2"])
def test_lora_on_edm_layers_trains_adapters_over_the_teachers_weights(kind):
    teacher = edm_teacher(kind)
    student = add_lora(student_from_teacher(teacher), rank=2, alpha=4, targets=TARGETS)
    adapted = [name for name, m in student.named_modules() if isinstance(m, WeightLora)]
    assert any("_down.conv" in n for n in adapted) and any("_up.conv" in n for n in adapted)  # FIR resampling
    assert {n for n, p in student.named_parameters() if p.requires_grad} == set(lora_parameter_names(student))
    assert share_frozen_weights(student, teacher) == sum(p.numel() for p in teacher.parameters())
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), teacher(x, s))  # B starts at zero
    student.train()
    student(x, s).square().mean().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["song", "edm2"])
def test_merged_edm_lora_computes_what_the_adapted_network_did(kind):
    teacher = edm_teacher(kind)
    student = add_lora(student_from_teacher(teacher), rank=2, alpha=2, targets=TARGETS).eval()
    share_frozen_weights(student, teacher)
    nudge_adapters(student)
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        adapted = student(x, s)
        merged = without_lora(student, merge=True)
        assert not has_lora(merged) and not torch.allclose(adapted, teacher(x, s), atol=1e-3)
        torch.testing.assert_close(merged(x, s), adapted, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(teacher(x, s), edm_teacher(kind)(x, s))  # merging left the teacher alone


def test_weightless_resampling_layers_and_dropout_are_refused_clearly():
    teacher = edm_teacher("dhariwal")  # ADM's down/up skips only resample (kernel=0)
    with pytest.raises(WeightLoraError, match="resampling-only"):
        add_lora(student_from_teacher(teacher), rank=2, alpha=2, targets=r".*_down\.skip")  # kernel=0: no weight
    with pytest.raises(WeightLoraError, match="dropout"):
        add_lora(student_from_teacher(teacher), rank=2, alpha=2, targets=TARGETS, dropout=0.1)
