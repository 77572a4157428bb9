"""2-D toy distributions (docs/methods.md §12.4): cheap, exact-sample benchmarks for few-step students.

Every set is generated from a seed, so a "dataset" is a recipe, not a file: the data module draws
training points with one seed and evaluation references with a disjoint one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.datasets import make_moons
from torch import Tensor

from distill.core.gmm import ring_mixture

TOY2D_NAMES: tuple[str, ...] = ("gmm", "moons", "rings", "checkerboard")

# Fixed affine maps (not per-sample statistics), so training and reference sets share one scale.
# Mean/std of make_moons(noise=0.05), measured on 1e6 points.
_MOONS_MEAN = (0.5, 0.25)
_MOONS_STD = (0.87, 0.50)
_RING_RADII = (0.5, 1.0, 1.5)
_RING_NOISE = 0.04


def _gmm(n: int, seed: int) -> np.ndarray:
    # Exactly the mixture the analytic teacher (distill.core.gmm) denoises in closed form.
    gen = torch.Generator().manual_seed(seed)
    return ring_mixture().sample(n, generator=gen).numpy()


def _moons(n: int, seed: int) -> np.ndarray:
    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return (x - np.asarray(_MOONS_MEAN)) / np.asarray(_MOONS_STD)


def _rings(n: int, seed: int) -> np.ndarray:
    # Three concentric circles, equally likely, radial Gaussian noise.
    rng = np.random.default_rng(seed)
    radius = np.asarray(_RING_RADII)[rng.integers(0, len(_RING_RADII), size=n)]
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    r = radius + _RING_NOISE * rng.standard_normal(n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)


def _checkerboard(n: int, seed: int) -> np.ndarray:
    # FFJORD / pi-Flow checkerboard without their final x2 scaling: 8 unit squares in [-2, 2]^2.
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1)


_GENERATORS = {"gmm": _gmm, "moons": _moons, "rings": _rings, "checkerboard": _checkerboard}


def make_toy2d(name: str, n: int, seed: int) -> Tensor:
    """Draw ``n`` points of a named 2-D toy distribution.

    Args:
        name: one of ``"gmm"`` (8-mode ring, ``ring_mixture()``), ``"moons"`` (standardised to
            roughly unit scale), ``"rings"`` (3 concentric circles), ``"checkerboard"``.
        n: number of points, >= 0.
        seed: the only source of randomness; equal seeds give equal tensors.

    Returns:
        (n, 2) float32 tensor.

    Raises:
        ValueError: unknown ``name`` or negative ``n``.
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown 2-D dataset {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if n == 0:  # torch.multinomial and make_moons reject zero-size draws
        return torch.empty(0, 2)
    return torch.from_numpy(np.ascontiguousarray(_GENERATORS[name](n, seed))).float()
