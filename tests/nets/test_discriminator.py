"""Standalone discriminators: shapes by data kind, time conditioning, shape read from a student."""

import pytest
import torch
from torch import nn

from distill.nets.discriminator import (
    ConvDiscriminator,
    MLPDiscriminator,
    build_discriminator,
    data_shape_of,
    head_for,
)
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel


def test_images_get_per_location_or_pooled_logits():
    x, s = torch.randn(3, 1, 8, 8), torch.rand(3)
    patch = build_discriminator((1, 8, 8), depth=2)
    assert isinstance(patch, ConvDiscriminator) and patch(x, s).shape == (3, 2, 2)
    pooled = build_discriminator((3, 9, 9), width=8, depth=3, pooled=True)
    assert pooled(torch.randn(2, 3, 9, 9), torch.rand(2)).shape == (2,)


def test_flat_data_gets_an_mlp():
    disc = build_discriminator((2,), width=16, depth=3)
    assert isinstance(disc, MLPDiscriminator) and disc(torch.randn(5, 2), torch.rand(5)).shape == (5,)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_the_noise_level_changes_the_logits(shape):
    torch.manual_seed(0)
    disc = build_discriminator(shape)
    x = torch.randn(1, *shape).expand(2, *shape)
    logits = disc(x, torch.tensor([0.1, 0.9]))
    assert not torch.allclose(logits[0], logits[1])
    logits.sum().backward()  # every parameter takes part
    assert all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("side", [2, 4, 8, 16])
def test_single_logit_head_reduces_any_map_to_one_logit_as_dmd2s(side):
    head = head_for((32, side, side), single_logit=True)
    assert head(torch.randn(3, 32, side, side)).shape == (3, 1, 1)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    if side == 8:  # DMD2's cls_pred_branch (edm_guidance.py:47-56): 4x4/s2, 4x4/s4, 1x1
        assert [(c.kernel_size, c.stride) for c in convs] == [((4, 4), (2, 2)), ((4, 4), (4, 4)), ((1, 1), (1, 1))]
    assert head_for((32, 8, 8))(torch.randn(3, 32, 8, 8)).shape == (3, 2, 2)  # the default: patch logits


def test_data_shape_is_read_from_our_students():
    assert data_shape_of(VelocityModel(TimeMLP((2,), width=8, depth=1))) == (2,)
    unet = UNet(sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    assert data_shape_of(VelocityModel(unet)) == (1, 8, 8)
    with pytest.raises(ValueError, match="data_shape"):
        data_shape_of(nn.Linear(2, 2))
