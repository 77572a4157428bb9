"""A second time input: zero-initialised, so an extended net equals the original until trained."""

import pytest
import torch

from distill.nets.factory import build_net, rebuild_with_extra_time
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet

TINY_UNET = {"type": "unet", "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}
TINY_MLP = {"type": "mlp", "width": 32, "depth": 2}
CASES = [(TINY_MLP, (2,)), (TINY_UNET, (1, 8, 8))]


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_extended_net_equals_the_original_for_any_extra_time(spec, shape):
    torch.manual_seed(0)
    net = build_net(spec, shape)
    extended = rebuild_with_extra_time(net)
    missing = extended.load_state_dict(net.state_dict(), strict=False).missing_keys
    assert missing and all("extra_embed" in k or "class_embedding" in k for k in missing)
    x, c = torch.randn(5, *shape), 1000 * torch.rand(5)
    for c_extra in (torch.zeros(5), 1000 * torch.rand(5), torch.full((5,), -3.0)):
        torch.testing.assert_close(extended(x, c, c_extra), net(x, c), rtol=0, atol=0)


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_without_extra_time_the_keys_are_unchanged(spec, shape):
    net = build_net(spec, shape)
    old_keys = set(build_net(spec, shape, extra_time=False).state_dict())
    assert set(net.state_dict()) == old_keys
    assert set(build_net(spec, shape, extra_time=True).state_dict()) > old_keys


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_the_extra_time_input_learns(spec, shape):
    """Zero init must not be a dead end: after one step the output depends on c_extra."""
    torch.manual_seed(0)
    net = build_net(spec, shape, extra_time=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, c = torch.randn(8, *shape), 1000 * torch.rand(8)
    for _ in range(2):  # the first step moves the zero layer, the second the one before it
        loss = (net(x, c, 1000 * torch.rand(8)) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(net(x, c, torch.zeros(8)), net(x, c, torch.full((8,), 500.0)))


def test_missing_or_unexpected_extra_time_input_is_refused():
    with pytest.raises(ValueError, match="pass c_extra"):
        TimeMLP((2,), width=8, depth=1, extra_time=True)(torch.randn(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="without extra_time"):
        TimeMLP((2,), width=8, depth=1)(torch.randn(3, 2), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="pass c_extra"):
        UNet(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, extra_time=True)(
            torch.randn(2, 1, 8, 8), torch.zeros(2)
        )
    with pytest.raises(TypeError, match="second time input"):
        rebuild_with_extra_time(torch.nn.Linear(2, 2))
