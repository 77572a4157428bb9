"""Training batches that resume mid-epoch exactly where a checkpoint left them.

An epoch's order is a pure function of ``(seed, epoch)``, and the loader counts the batches it has
handed out; a checkpoint stores ``(epoch, batches)``, and the resumed loader replays the same epoch
order without those batches. (Lightning restarts a non-stateful loader at the top of the epoch, so
a resumed run would see some batches twice and others never.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler


class EpochOrders:
    """``order(epoch)``: the permutation torch's seeded ``RandomSampler`` gives in that epoch.

    Replayed rather than invented, so runs keep the batches they drew before resuming existed:
    each epoch the ``DataLoader`` drew one int64 (its workers' base seed) from the shared generator,
    then the sampler drew ``randperm(n)``. Stepping forward costs one epoch's draws; going back
    replays from the seed.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._generator = torch.Generator().manual_seed(seed)
        self._next_epoch = 0

    def _draw(self) -> Tensor:
        torch.empty((), dtype=torch.int64).random_(generator=self._generator)
        self._next_epoch += 1
        return torch.randperm(self.n, generator=self._generator)

    def order(self, epoch: int) -> Tensor:
        if epoch < self._next_epoch:
            self._generator.manual_seed(self.seed)
            self._next_epoch = 0
        while self._next_epoch < epoch:
            self._draw()
        return self._draw()


class ResumableSampler(Sampler[int]):
    """This rank's share of the epoch's shuffled indices, less the first ``skip`` batches.

    Args:
        n: dataset size.
        batch_size: per-device batch size (the unit of ``skip``).
        seed: the shuffling seed.
        rank, world_size: this process's slice ``order[rank::world_size]`` (every rank the same length).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.orders = EpochOrders(n, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # Lightning calls this at every epoch start

    def __len__(self) -> int:
        return self.orders.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = self.orders.order(self.epoch)[self.rank :: self.world_size][: len(self)]
        yield from order[self.skip * self.batch_size :].tolist()


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` whose position Lightning checkpoints.

    Batches are counted here, in the main process, as they are handed out: worker processes
    prefetch indices ahead of training, so the sampler cannot know how many were consumed.
    """

    sampler: ResumableSampler

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first batch, after Lightning's set_epoch.
        resume, self._resume_at = getattr(self, "_resume_at", None), None
        self.sampler.skip = resume[1] if resume is not None and resume[0] == self.sampler.epoch else 0
        self.consumed = self.sampler.skip
        for batch in super().__iter__():
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": getattr(self, "consumed", 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved on the epoch's last batch: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._resume_at = (epoch, batches)
