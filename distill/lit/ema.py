"""Student-only EMA copies (never Lightning's whole-module averaging, which would copy the teacher)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from distill.core.ema import ema_update_
from distill.nets.freezing import frozen_copy


class EMAStack(nn.Module):
    """One frozen copy of ``model`` per decay, updated after every optimizer step."""

    def __init__(self, model: nn.Module, decays: Sequence[float]):
        super().__init__()
        self.decays = [float(d) for d in decays]
        self.copies = nn.ModuleList(frozen_copy(model) for _ in self.decays)

    def update(self, model: nn.Module) -> None:
        for decay, ema in zip(self.decays, self.copies, strict=True):
            ema_update_(ema, model, decay)

    def train(self, mode: bool = True) -> EMAStack:
        return super().train(False)

    def best(self, model: nn.Module) -> nn.Module:
        """The slowest EMA, or the raw model when no EMA is kept."""
        return self.copies[-1] if self.copies else model
