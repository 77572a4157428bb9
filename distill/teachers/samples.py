"""The teacher's own samples for given conditions, made once and cached in shards.

What a prompt-only dataset trains and is scored on in place of images: row i is the teacher's
(guided) Heun ODE solve from noise fixed by ``(seed, i)``, under row i's condition, so a resumed or
repeated run reads the same samples back instead of solving again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.conditioning import Condition, conditioned
from distill.core.grids import make_grid
from distill.core.io import cache_key, cached_in_shards
from distill.core.samplers import prior_state, sample_heun

SHARD_SIZE = 256  # samples per cached shard


def row_noise(seed: int, start: int, stop: int, shape: tuple[int, ...]) -> Tensor:
    """Unit noise of rows ``start .. stop`` (float32, CPU): fixed by the seed and the first row."""
    return torch.randn(stop - start, *shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + start))


def teacher_samples(
    teacher: nn.Module,
    condition_of: Callable[[Tensor], Condition],
    labels: Tensor,
    shape: tuple[int, ...],
    steps: int,
    folder: str | Path | None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """(N, *shape) teacher samples, row i under ``condition_of(labels[i:i+1])``; cached in ``folder``.

    Args:
        condition_of: labels (B,) -> the condition of those rows (e.g. prompt embeddings).
        steps: Heun steps on the cosine grid (2 steps - 1 teacher calls, each guided).
        device: where to solve (the teacher moves there for the call and back).
    """
    grid = make_grid("cosine", steps)
    home = next(teacher.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def make(start: int, stop: int) -> Tensor:
        out = []
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            noise = row_noise(seed, lo, hi, shape).to(device)
            with conditioned({k: v.to(device) for k, v in condition_of(labels[lo:hi]).items()}):
                out.append(sample_heun(teacher, prior_state(noise), grid.to(noise)).float().cpu())
        return torch.cat(out)

    teacher.to(device)
    try:
        return cached_in_shards(folder, len(labels), SHARD_SIZE, "samples", make, progress, "teacher samples")
    finally:
        teacher.to(home)


def samples_key(*parts: object) -> str:
    """A cache folder name for samples of these settings (teacher, prompts, guidance, steps, rows)."""
    return cache_key(repr(parts))
