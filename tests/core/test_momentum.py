"""ArcFlow's closed-form momentum steps against series, finite differences and numerical integration."""

import torch

from distill.core.momentum import (
    Momentum,
    advance,
    average_velocity,
    drop_components,
    phi,
    velocity_at,
)


def random_momentum(batch: int = 3, k: int = 5, shape: tuple[int, ...] = (2,), rate_scale: float = 2.0) -> Momentum:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(batch, k, *shape, generator=g, dtype=torch.float64)
    weights = torch.softmax(torch.randn(batch, k, *shape, generator=g, dtype=torch.float64), dim=1)
    rates = rate_scale * torch.randn(batch, k, *shape, generator=g, dtype=torch.float64)
    rates[:, 0] = 0.0
    return Momentum(means, weights, rates)


def rk4(m: Momentum, x: torch.Tensor, s_src: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor, n: int = 400):
    """Integrate dx/ds = velocity_at(m, s_src - s) from s_a down to s_b with classic RK4."""
    h, s = (s_b - s_a) / n, s_a.clone()
    f = lambda s_: velocity_at(m, s_src - s_)  # noqa: E731
    for _ in range(n):
        k1 = f(s)
        k2 = f(s + h / 2)
        k3 = f(s + h / 2)
        k4 = f(s + h)
        x = x + (h / 6)[:, None] * (k1 + 2 * k2 + 2 * k3 + k4)
        s = s + h
    return x


def test_phi_is_expm1_ratio_and_smooth_through_zero():
    u = torch.tensor([-3.0, -0.5, 0.7, 2.5], dtype=torch.float64)
    torch.testing.assert_close(phi(u), torch.expm1(u) / u)
    tiny = torch.tensor([-1e-9, 0.0, 1e-9, 5e-5], dtype=torch.float64)
    torch.testing.assert_close(phi(tiny), 1 + tiny / 2 + tiny**2 / 6, atol=1e-7, rtol=0)
    assert torch.isfinite(phi(torch.zeros(1))).all()


def test_closed_form_step_equals_numerical_integration_of_the_field():
    m = random_momentum()
    x = torch.randn(3, 2, dtype=torch.float64)
    s_src = torch.tensor([1.0, 0.8, 0.5], dtype=torch.float64)
    s_a = s_src - torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    s_b = torch.tensor([0.3, 0.05, 0.0], dtype=torch.float64)
    torch.testing.assert_close(advance(x, m, s_src, s_a, s_b), rk4(m, x, s_src, s_a, s_b), rtol=1e-9, atol=1e-9)


def test_near_zero_rates_are_stable():
    m = random_momentum(rate_scale=1e-9)
    x, s_src, s_b = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.zeros(3)
    moved = advance(x, m, s_src, s_src, s_b.double())
    # All rates ~0: every component is a constant velocity, so the step is one Euler step.
    torch.testing.assert_close(moved, -(m.weights * m.means).sum(1), rtol=1e-7, atol=1e-9)


def test_average_velocity_is_the_chord_and_tends_to_the_velocity():
    m = random_momentum()
    x = torch.randn(3, 2, dtype=torch.float64)
    s_src = torch.full((3,), 0.9, dtype=torch.float64)
    s_a, s_b = s_src - 0.2, s_src - 0.5
    chord = (x - advance(x, m, s_src, s_a, s_b)) / 0.3
    torch.testing.assert_close(average_velocity(m, s_src - s_a, s_a - s_b), chord)
    tau = torch.full((3,), 0.2, dtype=torch.float64)
    torch.testing.assert_close(
        average_velocity(m, tau, torch.full((3,), 1e-8, dtype=torch.float64)), velocity_at(m, tau), rtol=1e-6, atol=1e-6
    )


def test_component_dropout_keeps_a_normalised_mixture():
    m = random_momentum(batch=64, k=4)
    dropped = drop_components(m, 0.9, torch.Generator().manual_seed(0))
    torch.testing.assert_close(dropped.weights.sum(1), torch.ones(64, 2, dtype=torch.float64))
    assert (dropped.weights == 0).any() and (dropped.weights > 0).any(dim=1).all()
    assert drop_components(m, 0.0) is m


def test_component_dropout_is_per_sample_and_component_shared_by_every_element():
    # pnotp/ArcFlow policies/arcflow.py:96-106: mask (B, K, 1, 1, 1); a sample that drops all keeps all
    m = random_momentum(batch=256, k=3, shape=(2, 4, 4))
    dropped = drop_components(m, 0.6, torch.Generator().manual_seed(0))
    kept = dropped.weights > 0
    assert (kept == kept[:, :, :1, :1, :1]).all()  # one decision per (sample, component)
    all_kept = kept.flatten(2).all(dim=2).all(dim=1)
    assert 0.1 < all_kept.float().mean() < 0.4  # 0.4^3 + 0.6^3 (all dropped -> none dropped) = 0.28
    torch.testing.assert_close(dropped.weights[all_kept], m.weights[all_kept])
