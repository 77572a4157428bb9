"""What the ranks of a distributed run must agree on; each function is the identity in one process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(x: Tensor) -> Tensor:
    """``x`` summed over the ranks (in place); itself when not distributed."""
    if distributed():
        dist.all_reduce(x)
    return x


def from_rank_zero(x: Tensor) -> Tensor:
    """Rank 0's ``x`` on every rank (in place); itself when not distributed."""
    if distributed():
        dist.broadcast(x, src=0)
    return x


def agreed_randint(high: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> int:
    """A uniform integer in [0, high) from this rank's CPU generator, rank 0's on every rank. For the
    random choices that shape a step (how many network calls it makes), which every rank must take
    alike: a sharded network gathers its weights at every call. ``device``: where the collective runs."""
    draw = torch.randint(high, (1,), generator=generator)
    return int(from_rank_zero(draw.to(device))[0])
