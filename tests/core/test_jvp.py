"""JVPs on real networks: exact forward AD (attention included) against float64 finite differences."""

import pytest
import torch

import distill.core.jvp as jvp_module
from distill.core.jvp import jvp
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet


def _central_difference(fn, primals, tangents, h: float) -> torch.Tensor:
    with torch.no_grad():
        plus = fn(*(p + h * t for p, t in zip(primals, tangents, strict=True)))
        minus = fn(*(p - h * t for p, t in zip(primals, tangents, strict=True)))
    return (plus - minus) / (2 * h)


def _reference_jvp(fn, primals, tangents, h: float) -> torch.Tensor:
    """Richardson-extrapolated float64 central difference, error O(h^4)."""
    coarse, fine = (_central_difference(fn, primals, tangents, step) for step in (h, h / 2))
    return (4 * fine - coarse) / 3


@pytest.mark.parametrize(
    "net",
    [
        lambda: UNet(8, channels=1, block_out_channels=(8, 16), attention=True, norm_num_groups=4),
        lambda: TimeMLP((1, 8, 8), width=32, depth=2),
    ],
    ids=["unet_with_attention", "mlp"],
)
def test_exact_jvp_matches_float64_finite_differences(net):
    torch.manual_seed(0)
    model = net().double()
    gen = torch.Generator().manual_seed(1)
    x, dx = (torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    t, dt = torch.rand(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    # Along x the whole network runs in float64: the reference is exact to ~1e-12.
    out, along_x = jvp(model, (x, t), (dx, torch.zeros_like(t)), mode="exact")
    torch.testing.assert_close(out, model(x, t))
    expected = _reference_jvp(model, (x, t), (dx, torch.zeros_like(t)), h=1e-4)
    assert expected.abs().max() > 1e-2  # the tangent is not trivially zero
    torch.testing.assert_close(along_x, expected, atol=1e-9, rtol=1e-7)
    # The time embeddings compute in float32 (the nets' own choice), so the time direction is looser.
    _, along_xt = jvp(model, (x, t), (dx, dt), mode="exact")
    expected = _reference_jvp(model, (x, t), (dx, dt), h=1e-2)
    assert (expected - along_x).abs().max() > 1e-3  # the time tangent matters
    torch.testing.assert_close(along_xt, expected, atol=1e-5, rtol=1e-5)


def test_exact_jvp_keeps_gradients_through_the_primal_output():
    torch.manual_seed(0)
    model = TimeMLP((4,), width=16, depth=1)
    x, t = torch.randn(5, 4), torch.rand(5)
    out, _ = jvp(model, (x, t), (torch.randn(5, 4), torch.ones(5)))
    out.square().sum().backward()
    via_jvp = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x, t).square().sum().backward()
    for a, b in zip(via_jvp, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_finite_difference_mode_is_selectable_and_close_to_exact():
    torch.manual_seed(0)
    model = TimeMLP((4,), width=16, depth=1)
    calls = []

    def fn(x, t):
        calls.append(1)
        return model(x, t)

    primals, tangents = (torch.randn(5, 4), torch.rand(5)), (torch.randn(5, 4), torch.ones(5))
    _, exact = jvp(fn, primals, tangents, mode="exact")
    calls.clear()
    _, fd = jvp(fn, primals, tangents, mode="finite_difference", fd_step=1e-2)
    assert len(calls) == 3  # primal, plus, minus
    torch.testing.assert_close(fd, exact, atol=2e-3, rtol=1e-2)


class SquareWithoutJvp(torch.autograd.Function):
    """A custom op with backward but no forward-mode rule (like a fused kernel)."""

    @staticmethod
    def forward(x):
        return x**2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_exact_mode_falls_back_to_finite_differences_with_a_warning(monkeypatch):
    monkeypatch.setattr(jvp_module, "_warned_fallback", False)  # the warning fires once per process
    x, dx = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="finite-difference JVP"):
        out, tangent = jvp(lambda v: SquareWithoutJvp.apply(v), (x,), (dx,), mode="exact")
    torch.testing.assert_close(out, x**2)
    torch.testing.assert_close(tangent, 2 * x * dx)  # a central difference is exact on a quadratic


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="finite_difference"):
        jvp(torch.sin, (torch.ones(2),), (torch.ones(2),), mode="forward")


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_jvp_under_bf16_autocast_runs_in_float32(mode):
    """Under bf16-mixed (autocast) the JVP, its primal and a bf16 tangent are computed in fp32, as
    py-meanflow (meanflow/models/meanflow.py:54-57) and FastGen (precision_amp_jvp="float32") do."""
    torch.manual_seed(0)
    model = UNet(8, channels=1, block_out_channels=(8, 16), attention=True, norm_num_groups=4)
    gen = torch.Generator().manual_seed(1)
    x, dx = (torch.randn(3, 1, 8, 8, generator=gen) for _ in range(2))
    t = torch.rand(3, generator=gen)
    primals, tangents = (x, t), (dx, torch.ones(3))
    out32, tangent32 = jvp(model, primals, tangents, mode=mode, fd_step=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            teacher_like = torch.nn.functional.linear(dx.flatten(1), torch.eye(64)).view_as(dx)
        assert teacher_like.dtype == torch.bfloat16  # a tangent as an autocast forward returns it
        out, tangent = jvp(model, primals, tangents, mode=mode, fd_step=1e-2)
        _, from_bf16 = jvp(model, primals, (teacher_like, torch.ones(3)), mode=mode, fd_step=1e-2)
        assert torch.is_autocast_enabled("cpu")  # restored after the JVP
    assert out.dtype == tangent.dtype == from_bf16.dtype == torch.float32
    torch.testing.assert_close(out, out32, rtol=0, atol=0)
    torch.testing.assert_close(tangent, tangent32, rtol=0, atol=0)
    # A bf16 tangent is promoted: fp32 arithmetic on its (rounded) values.
    _, expected = jvp(model, primals, (teacher_like.float(), torch.ones(3)), mode=mode, fd_step=1e-2)
    torch.testing.assert_close(from_bf16, expected, rtol=0, atol=0)
