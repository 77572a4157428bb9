from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.core.gmm import ring_mixture
from distill.data.toy2d import TOY2D_NAMES, make_toy2d


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_shape_dtype_and_determinism(name: str) -> None:
    x = make_toy2d(name, 500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, make_toy2d(name, 500, seed=3))
    assert not torch.equal(x, make_toy2d(name, 500, seed=4))
    assert make_toy2d(name, 0, seed=0).shape == (0, 2)


def test_gmm_is_exactly_the_analytic_ring_mixture() -> None:
    expected = ring_mixture().sample(1000, generator=torch.Generator().manual_seed(7)).float()
    assert torch.equal(make_toy2d("gmm", 1000, seed=7), expected)


def test_moons_are_roughly_standardised() -> None:
    x = make_toy2d("moons", 20_000, seed=0)
    assert x.mean(0).abs().max() < 0.05
    assert torch.allclose(x.std(0), torch.ones(2), atol=0.05)


def test_rings_lie_on_three_circles() -> None:
    r = make_toy2d("rings", 3000, seed=0).norm(dim=1)
    dist = (r[:, None] - torch.tensor([0.5, 1.0, 1.5])).abs()
    assert (dist.min(1).values < 0.2).all()
    counts = torch.bincount(dist.argmin(1), minlength=3)
    assert (counts > 900).all()  # each ring ~1/3 of the points


def test_checkerboard_fills_only_even_squares() -> None:
    x = make_toy2d("checkerboard", 5000, seed=0).double().numpy()
    assert x.min() >= -2 and x.max() < 2
    parity = (np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2
    assert (parity == 0).all()
    squares = {tuple(v) for v in np.floor(x).astype(int)}
    assert len(squares) == 8


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown 2-D dataset 'spiral'.*gmm, moons, rings, checkerboard"):
        make_toy2d("spiral", 10, seed=0)
