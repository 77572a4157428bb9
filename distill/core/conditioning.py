"""Class conditioning without threading labels through every method.

A method's loss calls the teacher, the student and its own networks many times, on batches it
makes itself (fresh noise of the data batch's size, stacked copies of it). Rather than give every
call a label argument, the caller that owns the labels (the Lightning step, evaluation) opens
``conditioned(labels)`` and each class-conditional network reads ``condition_for(x)``: the labels
of the batch, repeated when a method stacked k copies of it. Unconditional networks never look.

Label ``num_classes`` is the null class (trained by label dropout), which classifier-free guidance
uses for the unconditional prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

_LABELS: ContextVar[Tensor | None] = ContextVar("distill_labels", default=None)


@contextmanager
def conditioned(labels: Tensor | None) -> Iterator[None]:
    """Inside: class-conditional networks use ``labels`` (B,) int64; None: unconditional."""
    token = _LABELS.set(labels)
    try:
        yield
    finally:
        _LABELS.reset(token)


def current_labels() -> Tensor | None:
    return _LABELS.get()


def condition_for(x: Tensor) -> Tensor | None:
    """The labels for a network call on ``x``: the batch's, tiled when ``x`` stacks k copies of it."""
    labels = _LABELS.get()
    if labels is None:
        return None
    n, b = x.shape[0], labels.shape[0]
    if n == b:
        return labels.to(x.device)
    if b and n % b == 0:
        return labels.to(x.device).repeat(n // b)
    raise ValueError(f"a class-conditional network got a batch of {n} samples under labels for {b}: this method "
                     "makes batches unrelated to the data batch and does not support class conditioning yet")


def num_classes_of(model: nn.Module) -> int:
    """Classes a velocity model is conditioned on (0: unconditional): our nets' ``num_classes``,
    or a diffusers model's ``num_class_embeds`` less its null class."""
    net = getattr(model, "net", model)
    if getattr(net, "num_classes", 0):
        return int(net.num_classes)
    embeds = getattr(getattr(net, "config", None), "num_class_embeds", None)
    return int(embeds) - 1 if embeds else 0


def drop_labels(labels: Tensor, p: float, num_classes: int) -> Tensor:
    """Labels with a share ``p`` replaced by the null class (classifier-free guidance training)."""
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def null_labels(like: Tensor, num_classes: int) -> Tensor:
    return torch.full((like.shape[0],), num_classes, dtype=torch.long, device=like.device)


def guided(velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, s: Tensor, scale: float,
           num_classes: int) -> Tensor:
    """Classifier-free guidance ``v_null + scale (v_cond - v_null)`` under the current labels
    (scale 1 or no labels: the conditional velocity alone, one call)."""
    cond = velocity(x, s)
    if scale == 1.0 or current_labels() is None:
        return cond
    with conditioned(null_labels(x, num_classes)):
        uncond = velocity(x, s)
    return uncond + scale * (cond - uncond)
