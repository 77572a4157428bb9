"""Per-rank randomness: under DDP every rank draws its own noise and times.

``seed_everything`` gives every process the same seed, so without this all ranks would draw the
same noise for their different data: a 2-GPU run would see half the noise a 1-GPU run of the same
global batch sees (docs/scaling.md, per-rank noise). A resumed run continues each rank's stream from the RNG
states its checkpoint holds (``distill.callbacks.resume.RunState``, restored at ``on_train_start``,
after this); the step enters the seed only for a resume that has no states to restore.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 32-bit seed of its own for each (run seed, rank, starting step); ``seed=0`` is a seed."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_process(seed: int) -> None:
    """Seed every generator a training step may draw from (torch CPU and CUDA, numpy, Python)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class RankSeed(L.Callback):
    """Re-seeds each rank with ``rank_seed(seed, rank, step)`` when fit starts on several processes.

    A single process keeps the stream ``seed_everything`` began, so single-device runs (and the
    figures published from them) draw exactly what they drew before ranks had seeds of their own.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        step = int(getattr(pl_module, "step_count", 0))  # the module's state is restored before fit starts
        seed_process(rank_seed(self.seed, trainer.global_rank, step))
