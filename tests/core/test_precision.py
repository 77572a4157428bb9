"""``full_precision``: fp32 islands inside a bf16-mixed step (JVPs, consistency targets, DM gradients)."""

import torch

from distill.core.precision import full_precision


def test_full_precision_turns_autocast_off_and_back_on():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        with full_precision():
            inside = layer(x)
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu") and layer(x).dtype == torch.bfloat16
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, layer(x), rtol=0, atol=0)


def test_full_precision_outside_autocast_changes_nothing():
    with full_precision():
        assert not torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
