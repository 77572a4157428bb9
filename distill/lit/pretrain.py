"""``PretrainModule``: trains the teachers the benchmarks distil (EDM or flow-matching loss)."""

from __future__ import annotations

import lightning as L
import torch

from distill.core.conditioning import conditioned, drop_labels, num_classes_of
from distill.lit.ema import EMAStack
from distill.nets.velocity import VelocityModel
from distill.teachers.pretraining import denoising_loss


class PretrainModule(L.LightningModule):
    """Args:
    model: the velocity model to train.
    lr: AdamW learning rate (cosine-free: small nets converge at constant lr).
    ema_decay: decay of the EMA copy that becomes the teacher.
    label_dropout: share of labels replaced by the null class (class-conditional nets), which
        trains the unconditional prediction classifier-free guidance needs.
    """

    def __init__(
        self,
        model: VelocityModel,
        lr: float = 1e-3,
        ema_decay: float = 0.999,
        warmup_steps: int = 100,
        label_dropout: float = 0.1,
    ):
        super().__init__()
        self.model = model
        self.ema = EMAStack(model, [ema_decay])
        self.lr, self.warmup_steps = lr, warmup_steps
        self.num_classes, self.label_dropout = num_classes_of(model), label_dropout

    def training_step(self, batch, batch_idx: int):
        x0, labels = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
        if self.num_classes and labels is not None:
            labels = drop_labels(labels, self.label_dropout, self.num_classes)
        with conditioned(labels if self.num_classes else None):
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
