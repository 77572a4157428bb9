"""``PretrainModule``: trains the teachers the benchmarks distil (EDM or flow-matching loss)."""

from __future__ import annotations

import lightning as L
import torch

from distill.lit.ema import EMAStack
from distill.nets.denoiser import VelocityModel
from distill.teachers.pretraining import denoising_loss


class PretrainModule(L.LightningModule):
    """Args:
    model: the velocity model to train.
    lr: AdamW learning rate (cosine-free: small nets converge at constant lr).
    ema_decay: decay of the EMA copy that becomes the teacher.
    """

    def __init__(self, model: VelocityModel, lr: float = 1e-3, ema_decay: float = 0.999, warmup_steps: int = 100):
        super().__init__()
        self.model = model
        self.ema = EMAStack(model, [ema_decay])
        self.lr, self.warmup_steps = lr, warmup_steps

    def training_step(self, batch, batch_idx: int):
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = denoising_loss(self.model, x0).mean()
        self.log("loss", loss, prog_bar=True, on_step=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update(self.model)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def teacher_model(self) -> VelocityModel:
        return self.ema.best(self.model)
