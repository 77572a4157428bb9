"""Resuming a run: which checkpoint it continues from, and the state Lightning does not keep.

Lightning's checkpoint holds the module (student, EMA copies, the method's nets and counters),
every optimizer and scheduler, the grad scaler, the loop counters, callback states and the
training loader's position. ``RunState`` adds the rest: every rank's RNG states (restored just
before the first resumed batch, so the noise continues as if never interrupted), the W&B run id
(the resumed run logs into the same W&B run) and the method's name (a run dir reused by another
method is refused rather than half-loaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from distill.core.rng import process_rng_state, set_process_rng_state
from distill.errors import CheckpointError, ConfigError
from distill.lit.checkpoint_io import read_checkpoint

RUN_KEY = "distill_run"
LAST = "last.ckpt"


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int  # Lightning's global step (optimizer steps)
    wandb_run_id: str | None


def wandb_run_id(trainer: L.Trainer) -> str | None:
    return next((str(lg.version) for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def gather_rng_states(trainer: L.Trainer) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective: every rank saves a checkpoint)."""
    state = process_rng_state()
    if trainer.world_size == 1:
        return [state]
    states: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(states, state)
    return states


class RunState(L.Callback):
    """Writes RNG states, W&B run id and method name into every checkpoint; restores the RNG."""

    def __init__(self, method: str):
        self.method = method
        self._rng: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_KEY] = {
            "method": self.method,
            "wandb_run_id": wandb_run_id(trainer),
            "rng": gather_rng_states(trainer),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._rng = checkpoint.get(RUN_KEY, {}).get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # Here, not at load: building the module and evaluating the teacher draw from the RNG too.
        states, self._rng = self._rng, None
        if states is None:
            return
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds RNG states of {len(states)} ranks, this run has "
                f"{trainer.world_size}: the run continues, but with fresh noise"
            )
            return
        set_process_rng_state(states[trainer.global_rank])


def newest_first(directory: Path) -> list[Path]:
    """``*.ckpt`` in ``directory`` (files, or an FSDP run's shard folders), newest first; ``last.ckpt``
    first among equals."""
    paths = list(directory.glob("*.ckpt")) if directory.is_dir() else []
    return sorted(paths, key=lambda p: (os.stat(p).st_mtime_ns, p.name == LAST), reverse=True)


def resume_point(path: Path, ckpt: dict[str, Any], method: str) -> ResumePoint:
    """Where ``ckpt`` resumes, once it is known to be this method's."""
    run = ckpt.get(RUN_KEY, {})
    if run.get("method", method) != method:
        raise CheckpointError(
            f"{path} was written by method={run['method']}, but this run is method={method}: "
            "give this run its own dir (hydra.run.dir=...), or start afresh with ckpt_path=null"
        )
    return ResumePoint(path, int(ckpt.get("global_step", 0)), run.get("wandb_run_id"))


def find_resume_point(ckpt_path: str | None, directory: Path, method: str) -> ResumePoint | None:
    """Where the run continues from.

    Args:
        ckpt_path: ``auto`` (the newest good checkpoint in ``directory`` if any), ``last`` (the same,
            but one must exist), a checkpoint file, or None (start afresh).
        directory: the run's ``checkpoints/``.
        method: this run's ``method.name``.

    A corrupt or unreadable checkpoint in ``directory`` is skipped with a warning for the one
    before it; an explicitly named one that is bad is an error.
    """
    if ckpt_path is None:
        return None
    if ckpt_path not in ("auto", "last"):
        path = Path(ckpt_path).expanduser()
        return resume_point(path, read_checkpoint(path, weights=False), method)
    skipped = []
    for path in newest_first(directory):
        try:
            ckpt = read_checkpoint(path, weights=False)
        except CheckpointError as err:
            rank_zero_warn(f"resume: skipping {err}")
            skipped.append(path.name)
            continue
        return resume_point(path, ckpt, method)
    if ckpt_path == "last":
        found = f" (unreadable: {', '.join(skipped)})" if skipped else ""
        raise ConfigError(
            f"ckpt_path=last, but {directory} holds no good checkpoint{found}: point "
            "hydra.run.dir at the run to continue, or drop ckpt_path to start afresh"
        )
    return None
