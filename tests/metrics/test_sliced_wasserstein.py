from __future__ import annotations

import math

import pytest
import torch

from distill.metrics.sliced_wasserstein import random_directions, sliced_wasserstein


def _gauss(n: int, seed: int, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + torch.tensor(
        shift, dtype=torch.float64
    )


def test_zero_for_identical_sets() -> None:
    x = _gauss(1000, 0)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(1000)]) == pytest.approx(0.0, abs=1e-12)  # order-free


def test_grows_with_shift() -> None:
    x = _gauss(2000, 0)
    values = [sliced_wasserstein(x, _gauss(2000, 1, (s, 0.0))) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 1.0


@pytest.mark.parametrize(("p", "factor"), [(2, 1 / math.sqrt(2)), (1, 2 / math.pi)])
def test_matches_closed_form_for_shifted_gaussians(p: int, factor: float) -> None:
    # Projections of N(0, I) and N(m, I) on theta are N(0, 1), N(theta.m, 1): W_p = |theta.m|.
    # Over the unit circle E[(theta.m)^2] = |m|^2 / 2 and E|theta.m| = 2 |m| / pi.
    m = torch.tensor([1.2, -1.6], dtype=torch.float64)  # |m| = 2
    per_slice = (random_directions(2, 512, seed=0).T @ m).abs()
    expected_fixed = float(per_slice.pow(p).mean() ** (1 / p))
    x = _gauss(5_000, 0)
    # Same points shifted: every slice is an exact translate, so SW is exact for these directions.
    assert sliced_wasserstein(x, x + m, num_projections=512, seed=0, p=p) == pytest.approx(expected_fixed, rel=1e-9)
    # Independent samples: the expectation over all directions, up to sampling and direction noise.
    sw = sliced_wasserstein(x, _gauss(5_000, 1, tuple(m.tolist())), num_projections=512, seed=0, p=p)
    assert sw == pytest.approx(2.0 * factor, rel=0.04)


def test_unequal_sizes_are_subsampled_deterministically() -> None:
    x, y = _gauss(3000, 0), _gauss(1000, 1, (1.0, 0.0))
    a = sliced_wasserstein(x, y, seed=3)
    assert a == sliced_wasserstein(x, y, seed=3)
    assert a == pytest.approx(sliced_wasserstein(y, x, seed=3), rel=0.1)
    assert a == pytest.approx(1 / math.sqrt(2), rel=0.15)


def test_directions_are_unit_and_seeded() -> None:
    theta = random_directions(5, 64, seed=1)
    assert theta.shape == (5, 64) and torch.allclose(theta.norm(dim=0), torch.ones(64, dtype=torch.float64))
    assert torch.equal(theta, random_directions(5, 64, seed=1))
    assert not torch.equal(theta, random_directions(5, 64, seed=2))


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="one D"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="p=0.5"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 2), p=0.5)
