"""The frozen-teacher wrapper every method talks to."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.core.conditioning import LABELS, Condition, guidance_for, guided, num_classes_of
from distill.core.prediction import velocity_to_eps, velocity_to_x0
from distill.core.tensors import append_dims


class Teacher(nn.Module):
    """A frozen velocity model: always ``eval()``, never trainable, never in a student checkpoint.

    Args:
        model: a velocity model ``(x_s, s) -> v``.
        data_shape: shape of one sample.
        meta: how the teacher was made (stored beside its weights).
        guidance: classifier-free guidance scale of a class-conditional teacher (1: none); every
            teacher call is guided, so guidance folds into whatever the student learns from it. A
            condition that carries per-sample scales (``guidance_scale``) overrides it row by row.
    """

    def __init__(
        self, model: nn.Module, data_shape: tuple[int, ...], meta: dict[str, Any] | None = None, guidance: float = 1.0
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.data_shape = tuple(data_shape)
        self.meta = dict(meta or {})
        self.num_classes = num_classes_of(model)
        self.guidance = guidance
        self.codec: nn.Module | None = None  # a latent teacher's VAE (distill.teachers.latent.LatentCodec)

    def train(self, mode: bool = True) -> Teacher:
        # Lightning flips every submodule to train() at fit start; a teacher's dropout must stay off.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """The velocity; a conditional teacher with ``guidance != 1`` gives the CFG velocity."""
        return self.differentiable(x, s)

    def differentiable(self, x: Tensor, s: Tensor) -> Tensor:
        """The velocity with its gradient to ``x`` (the weights stay frozen): for losses that
        differentiate through the teacher, as SiD's does."""
        null = self.null_condition
        scale = guidance_for(x)
        scale = self.guidance if scale is None else scale
        if null is not None and (isinstance(scale, Tensor) or scale != 1.0):
            return guided(self.model, x, s, scale, null)
        return self.model(x, s)

    @property
    def null_condition(self) -> Condition | None:
        """What classifier-free guidance's unconditional prediction is conditioned on: the null class,
        or the empty prompt of a text-conditional model; None for an unconditional teacher."""
        if self.num_classes:
            tensor = next(self.model.parameters(), None)  # an analytic teacher has none: CPU
            return {LABELS: torch.tensor([self.num_classes], device=None if tensor is None else tensor.device)}
        return getattr(self.model, "null_condition", None)

    def x0(self, x: Tensor, s: Tensor) -> Tensor:
        return velocity_to_x0(x, append_dims(s, x.ndim), self(x, s))

    def eps(self, x: Tensor, s: Tensor) -> Tensor:
        return velocity_to_eps(x, append_dims(s, x.ndim), self(x, s))
