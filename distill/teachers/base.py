"""The frozen-teacher wrapper every method talks to."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.core.prediction import velocity_to_eps, velocity_to_x0
from distill.core.tensors import append_dims


class Teacher(nn.Module):
    """A frozen velocity model: always ``eval()``, never trainable, never in a student checkpoint.

    Args:
        model: a velocity model ``(x_s, s) -> v``.
        data_shape: shape of one sample.
        meta: how the teacher was made (stored beside its weights).
    """

    def __init__(self, model: nn.Module, data_shape: tuple[int, ...], meta: dict[str, Any] | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.data_shape = tuple(data_shape)
        self.meta = dict(meta or {})

    def train(self, mode: bool = True) -> Teacher:
        # Lightning flips every submodule to train() at fit start; a teacher's dropout must stay off.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return self.model(x, s)

    def x0(self, x: Tensor, s: Tensor) -> Tensor:
        return velocity_to_x0(x, append_dims(s, x.ndim), self(x, s))

    def eps(self, x: Tensor, s: Tensor) -> Tensor:
        return velocity_to_eps(x, append_dims(s, x.ndim), self(x, s))
