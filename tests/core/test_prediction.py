"""Exact round trips between every prediction kind and (x0, eps)."""

import math

import pytest
import torch

from distill.core.prediction import (
    PREDICTION_KINDS,
    from_x0_eps,
    to_x0_eps,
    velocity_to_eps,
    velocity_to_x0,
    x0_to_velocity,
)

B, D = 6, 3


def _scales(kind: str, sigma_data: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "trig":
        # TrigFlow constraint alpha^2 + (sigma / sigma_data)^2 = 1.
        t = torch.rand(B, generator=gen, dtype=torch.float64) * 1.4 + 0.05
        return torch.cos(t), sigma_data * torch.sin(t)
    alpha = torch.rand(B, generator=gen, dtype=torch.float64) * 2 + 0.1
    sigma = torch.rand(B, generator=gen, dtype=torch.float64) * 2 + 0.1
    return alpha, sigma


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
def test_round_trip(kind):
    gen = torch.Generator().manual_seed(0)
    sd = 0.5
    alpha, sigma = _scales(kind, sd, gen)
    x0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, D, generator=gen, dtype=torch.float64)
    x = alpha[:, None] * x0 + sigma[:, None] * eps
    pred = from_x0_eps(kind, x0, eps, alpha, sigma, sd)
    x0_r, eps_r = to_x0_eps(kind, pred, x, alpha, sigma, sd)
    torch.testing.assert_close(x0_r, x0, atol=1e-10, rtol=0)
    torch.testing.assert_close(eps_r, eps, atol=1e-10, rtol=0)


def test_trig_matches_trigflow_definition():
    # sigma_d F = dx_t/dt = cos t z - sin t x0 with z = sigma_d eps (docs/methods.md 1.5).
    sd, t = 0.5, torch.tensor([0.3, 1.1], dtype=torch.float64)
    x0, eps = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    F = from_x0_eps("trig", x0, eps, torch.cos(t), sd * torch.sin(t), sd)
    dxdt = torch.cos(t)[:, None] * sd * eps - torch.sin(t)[:, None] * x0
    torch.testing.assert_close(sd * F, dxdt, atol=1e-12, rtol=0)


def test_v_is_trig_with_unit_sigma_data():
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    x0, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    a, s = torch.cos(t), torch.sin(t)
    torch.testing.assert_close(from_x0_eps("v", x0, eps, a, s), from_x0_eps("trig", x0, eps, a, s, 1.0))


def test_fm_helpers_round_trip():
    gen = torch.Generator().manual_seed(1)
    s = torch.rand(B, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    x0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, D, generator=gen, dtype=torch.float64)
    x = (1 - s[:, None]) * x0 + s[:, None] * eps
    v = eps - x0
    torch.testing.assert_close(velocity_to_x0(x, s, v), x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(velocity_to_eps(x, s, v), eps, atol=1e-12, rtol=0)
    torch.testing.assert_close(x0_to_velocity(x, s, x0), v, atol=1e-10, rtol=0)
    # "flow" kind on the FM process is the same velocity.
    assert math.isclose((from_x0_eps("flow", x0, eps, 1 - s, s) - v).abs().max().item(), 0.0, abs_tol=1e-14)


def test_bad_kind_names_valid_kinds():
    z = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="valid kinds"):
        to_x0_eps("score", z, z, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="x0"):
        from_x0_eps("score", z, z, torch.ones(1), torch.ones(1))
