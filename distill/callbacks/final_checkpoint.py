"""The finished run's own weights in ``last.ckpt``, whatever its length.

Lightning's ``ModelCheckpoint(every_n_train_steps=n)`` saves only when the optimizer-step count is a
multiple of n. A run whose last step is not (750 batches with n = 500; DMD2's two optimizers, whose
1,500 batches end at an odd optimizer step) kept an earlier step's weights in ``last.ckpt``, which
``distill-eval run_dir=``, ``distill-export`` and a resume then read as the final ones.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class FinalCheckpoint(L.Callback):
    """Saves ``path`` after the run's last batch unless the periodic checkpoint falls on that step.

    Args:
        path: the checkpoint to write (the run's ``last.ckpt``).
        every_n_steps: the periodic checkpoint's interval in optimizer steps (it saves those itself).
    """

    def __init__(self, path: str | Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(path), every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.finished and trainer.global_step % self.every_n_steps:
            trainer.save_checkpoint(
                self.path, weights_only=False
            )  # whole state; every rank: sharded strategies save collectively
