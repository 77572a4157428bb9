"""Feature taps and discriminator heads on borrowed backbones."""

import pytest
import torch
from torch import nn

from distill.nets.discriminator import ConvHead, FeatureHeads, VectorHead, head_for
from distill.nets.features import (
    FeatureTap,
    bottleneck_layer,
    encoder_layers,
    has_parameters,
    read_features,
)
from distill.nets.freezing import frozen, frozen_parameter_names
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel
from distill.teachers.edm import EDMVelocity
from tests.teachers.edm_pickles import tiny_edm


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_tap_captures_named_outputs_and_can_stop_early():
    model = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2), Counting())
    x = torch.randn(5, 3)
    (h0, h2) = FeatureTap(model, ["0", "2"]).run(lambda: model(x))
    torch.testing.assert_close(h0, model[0](x))
    torch.testing.assert_close(h2, model[2](model[1](model[0](x))))
    calls = model[3].calls
    FeatureTap(model, ["0"], stop_after_last=True).run(lambda: model(x))
    assert model[3].calls == calls  # the rest of the forward never ran
    assert not model[0]._forward_hooks  # hooks are removed afterwards


def test_tap_names_missing_layers():
    with pytest.raises(ValueError, match="no submodule"):
        FeatureTap(nn.Linear(2, 2), ["mid_block"])


def test_bottleneck_and_encoder_layers_of_our_nets():
    unet = VelocityModel(UNet(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4))
    assert bottleneck_layer(unet) == "net.model.mid_block"
    assert encoder_layers(unet) == ["net.model.down_blocks.0", "net.model.down_blocks.1", "net.model.mid_block"]
    mlp = VelocityModel(TimeMLP((2,), width=16, depth=3))
    assert bottleneck_layer(mlp) == "net.blocks.2"
    assert encoder_layers(mlp) == ["net.blocks.0", "net.blocks.1", "net.blocks.2"]
    assert has_parameters(mlp) and not has_parameters(nn.Identity())


@pytest.mark.parametrize(
    ("shape", "kind", "out"),
    [
        ((16, 4, 4), ConvHead, (3, 2, 2)),
        ((16, 8, 8), ConvHead, (3, 2, 2)),
        ((16, 2, 2), ConvHead, (3, 2, 2)),
        ((32,), VectorHead, (3,)),
        ((10, 32), VectorHead, (3, 10)),
    ],
)
def test_heads_fit_the_feature_shape(shape, kind, out):
    head = head_for(shape)
    assert isinstance(head, kind)
    assert head(torch.randn(3, *shape)).shape == out


def test_feature_heads_give_one_logit_map_per_layer():
    heads = FeatureHeads([(16, 4, 4), (32,)])
    logits = heads([torch.randn(2, 16, 4, 4), torch.randn(2, 32)])
    assert [tuple(lg.shape) for lg in logits] == [(2, 2, 2), (2,)]
    with pytest.raises(ValueError, match="2 heads"):
        heads([torch.randn(2, 32)])


def test_read_features_cuts_the_forward_and_passes_analytic_models_through():
    model = VelocityModel(TimeMLP((2,), width=16, depth=3))
    x, s = torch.randn(4, 2), torch.rand(4)
    (h,) = read_features(model, lambda root: [bottleneck_layer(root)], x, s)
    assert h.shape == (4, 16)
    analytic = nn.Identity()  # no parameters, no layers: the picker is never asked
    assert read_features(analytic, lambda root: pytest.fail("no layers to pick"), x, s)[0] is x


def test_frozen_blocks_parameter_gradients_but_not_input_gradients_and_restores_flags():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    x = torch.randn(3, 2, requires_grad=True)
    with frozen(net):
        net(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]


@pytest.mark.parametrize(("kind", "unet"), [("song", "net.model"), ("dhariwal", "net.model"), ("edm2", "net.unet")])
def test_edm_unets_read_at_the_encoder_end_and_middle_blocks(kind, unet):
    model = EDMVelocity(tiny_edm(kind, channels=3, resolution=8)[0])
    assert bottleneck_layer(model) == f"{unet}.enc.4x4_block0"  # DMD2's EDM "return_bottleneck": the encoder output
    assert encoder_layers(model) == [f"{unet}.enc.8x8_block0", f"{unet}.enc.4x4_block0", f"{unet}.dec.4x4_in1"]
    shapes = [f.shape for f in read_features(model, encoder_layers, torch.randn(2, 3, 8, 8), torch.rand(2))]
    assert shapes == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 32, 4, 4)]
    conv = frozen_parameter_names(model, "conv")  # GDD-I's rule knows EDM's own convolutions
    assert f"{unet}.enc.8x8_block0.{'conv_res0' if kind == 'edm2' else 'conv0'}.weight" in conv
    assert not any("affine" in n or "emb_linear" in n for n in conv)
