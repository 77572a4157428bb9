"""Preemption: a signalled run finishes its batch, saves ``last.ckpt``, requeues itself and exits.

Schedulers send SIGTERM before they kill a job; SLURM sends SIGUSR1 ahead of the time limit when
asked (``#SBATCH --signal=USR1@120``). Either lets the current batch finish (a checkpoint taken
mid-step would not resume exactly), then every rank saves, rank zero requeues the job when the
hardware config's ``SLURMEnvironment`` has ``auto_requeue``, and the process exits with status
128 + the signal's number, as if the signal had ended it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Training stopped by a preemption signal, after saving its checkpoint."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)


def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array jobs."""
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_slurm_job(env: Mapping[str, str] = os.environ) -> bool:
    job = slurm_job_id(env)
    if job is None:
        return False
    return subprocess.run(["scontrol", "requeue", job], check=False).returncode == 0


class PreemptionCallback(L.Callback):
    """Saves to ``path`` and raises ``Preempted`` at the end of the batch a signal arrived in."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.signum = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed after Lightning's own handlers (which only flag SIGTERM, and on SLURM save mid-step),
        # and undone by Lightning's teardown, which restores the handlers from before fit.
        self.signum = 0
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        signum = self.signum or (int(signal.SIGTERM) if trainer.received_sigterm else 0)
        if trainer.world_size > 1:  # one rank signalled is all ranks saving
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max"))
        if not signum:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: a resume needs optimizers and loops
        environment = trainer._accelerator_connector.cluster_environment  # what Lightning's own requeue reads
        requeued = (
            trainer.is_global_zero
            and isinstance(environment, SLURMEnvironment)
            and environment.auto_requeue
            and requeue_slurm_job()
        )
        if trainer.is_global_zero:
            then = "the job is requeued" if requeued else "run the same command again to continue"
            print(
                f"preempted by {signal.Signals(signum).name} at step {int(pl_module.step_count)}: saved "
                f"{self.path}; {then}",
                file=sys.stderr,
                flush=True,
            )
        raise Preempted(signum)
