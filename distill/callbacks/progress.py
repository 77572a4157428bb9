"""One progress bar over the whole run, in the steps ``train.max_steps`` counts.

Lightning's bar counts batches of the current epoch and titles it ``Epoch N/-2`` when
``max_epochs=-1``; an in-memory data set restarts its epoch every few hundred batches, so that bar
says nothing about how far the run is. This one shows ``step k/max_steps`` with Lightning's rate,
ETA and logged metrics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


def run_progress(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, int]:
    """(steps done, steps in the run): a distillation run counts its training batches against
    ``max_batches`` (a multi-optimizer method takes several optimizer steps per batch), any other
    module Lightning's optimizer steps against ``trainer.max_steps``."""
    total = getattr(pl_module, "max_batches", None)
    if total is not None:
        return int(pl_module.step_count), int(total)
    return int(trainer.global_step), int(trainer.max_steps)


class StepProgressBar(TQDMProgressBar):
    """``step k/max_steps`` for the whole run, resumed runs starting where they stopped."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        done, total = run_progress(trainer, trainer.lightning_module)
        if bar.total != total:  # the first epoch; later epochs keep counting on the same bar
            bar.reset(total=total)
            bar.initial = done
            bar.n = done
            bar.set_description("step")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        done, _ = run_progress(trainer, pl_module)
        if bar is not None and self._should_update(done, bar.total):
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar too

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_end(self, *_: Any) -> None:
        self.train_progress_bar.close()
