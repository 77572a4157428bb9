"""Per-sample seeded noise: sample i gets the same noise whatever the batch size or device count."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_STREAM_STRIDE = 1_000_003  # a prime: (seed, stream) pairs never collide for realistic counts


def seed_generators(seeds: Sequence[int], stream: int = 0) -> list[torch.Generator]:
    """One CPU generator per seed (diffusers' ``randn_tensor`` takes such a list, one per sample)."""
    return [torch.Generator().manual_seed(int(seed) * _STREAM_STRIDE + stream) for seed in seeds]


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], stream: int = 0) -> Tensor:
    """Stack ``N(0, I)`` draws of ``shape``, one generator per seed; ``stream`` separates reuses."""
    return (
        torch.stack([torch.randn(*shape, generator=g) for g in seed_generators(seeds, stream)])
        if seeds
        else torch.empty(0, *shape)
    )


def sample_seeds(num_samples: int, base_seed: int = 0) -> list[int]:
    """The seeds of an evaluation: ``base_seed * num_samples + i`` keeps seed sets disjoint."""
    return [base_seed * 1_000_000 + i for i in range(num_samples)]
