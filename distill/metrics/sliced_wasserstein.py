"""Sliced Wasserstein distance for 2-D toys (docs/methods.md §12.4).

    SW_p(X, Y) = ( (1/L) sum_l W_p(theta_l^T X, theta_l^T Y)^p )^(1/p)

with L fixed unit directions drawn from ``seed``; for equal-size samples the 1-D distance is
exact by sorting, ``W_p^p = mean |sort(a) - sort(b)|^p``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_directions(dim: int, num_projections: int, seed: int) -> Tensor:
    """(dim, L) float64 unit vectors, uniform on the sphere, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, num_projections, generator=gen, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def subsample(x: Tensor, n: int, seed: int) -> Tensor:
    """``n`` distinct rows of ``x`` chosen by ``seed`` (``x`` itself if it has ``n`` rows)."""
    if len(x) == n:
        return x
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=gen)[:n]]


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 256, seed: int = 0, p: float = 2) -> float:
    """Sliced p-Wasserstein distance between two point clouds.

    Args:
        x: (N, D) samples. y: (M, D) samples. The larger set is subsampled (seeded) to
            ``min(N, M)`` points so each slice is solved exactly by sorting.
        num_projections: number of directions L (128-1024 is typical).
        seed: fixes the directions and the subsample, so calls are comparable.
        p: order, >= 1.

    Returns:
        SW_p as a Python float, computed in float64.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D) with one D, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(len(x), len(y)) == 0:
        raise ValueError("x and y must each hold at least one point")
    if p < 1:
        raise ValueError(f"p={p}; the Wasserstein order must be >= 1")
    n = min(len(x), len(y))
    x = subsample(x.detach().cpu().double(), n, seed)
    y = subsample(y.detach().cpu().double(), n, seed + 1)
    theta = random_directions(x.shape[1], num_projections, seed)
    # (L, n) layout: sorting contiguous rows is ~5x faster than sorting along dim 0.
    proj_x = (theta.T @ x.T).sort(dim=1).values
    proj_y = (theta.T @ y.T).sort(dim=1).values
    wp_p = (proj_x - proj_y).abs().pow(p).mean(dim=1)  # (L,) per-slice W_p^p
    return float(wp_p.mean() ** (1.0 / p))
