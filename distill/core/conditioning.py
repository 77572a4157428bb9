"""Conditioning (class labels, prompt embeddings) without threading it through every method.

A method's loss calls the teacher, the student and its own networks many times, on batches it
makes itself (fresh noise of the data batch's size, stacked copies of it). Rather than give every
call a condition argument, the caller that owns the batch's condition (the Lightning step,
evaluation) opens ``conditioned(...)`` and each conditional network reads ``condition_for(x)``:
the batch's condition, tiled when a method stacked k copies of the batch. Unconditional networks
never look.

A condition is a dict of batch-first tensors named as diffusers' forward arguments:
``class_labels`` (B,) int64, ``encoder_hidden_states`` (B, L, D) prompt embeddings, and for the
text-to-image transformers ``pooled_projections`` (B, P) (SD3, FLUX.1) and
``encoder_hidden_states_mask`` (B, L) (Qwen-Image: 1 on prompt tokens, 0 on padding). Label
``num_classes`` is the null class (trained by label dropout) and the empty prompt's embedding the
null prompt: classifier-free guidance takes its unconditional prediction from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

Condition = dict[str, Tensor]
LABELS = "class_labels"
PROMPTS = "encoder_hidden_states"
POOLED = "pooled_projections"
PROMPT_MASK = "encoder_hidden_states_mask"

_CONDITION: ContextVar[Condition | None] = ContextVar("distill_condition", default=None)


def as_condition(condition: Condition | Tensor | None) -> Condition | None:
    """A bare tensor is class labels."""
    return {LABELS: condition} if isinstance(condition, Tensor) else condition


@contextmanager
def conditioned(condition: Condition | Tensor | None) -> Iterator[None]:
    """Inside: conditional networks use ``condition`` (labels, or a dict); None: unconditional."""
    token = _CONDITION.set(as_condition(condition))
    try:
        yield
    finally:
        _CONDITION.reset(token)


def current_condition() -> Condition | None:
    return _CONDITION.get()


def tile(condition: Condition, n: int) -> Condition:
    """``condition`` for a batch of ``n``: as is, or repeated when ``n`` stacks k copies of its batch."""
    b = next(iter(condition.values())).shape[0]
    if n == b:
        return condition
    if b and n % b == 0:
        return {k: v.repeat(n // b, *[1] * (v.ndim - 1)) for k, v in condition.items()}
    raise ValueError(
        f"a conditional network got a batch of {n} samples under a condition for {b}: this method "
        "makes batches unrelated to the data batch and does not support conditioning yet"
    )


def condition_rows(rows: slice, batch: int) -> Condition | None:
    """The current condition's ``rows`` of a batch of ``batch`` (None: unconditional), for calls on
    part of the batch (e.g. teacher samples that replace some of its rows)."""
    condition = _CONDITION.get()
    return None if condition is None else {k: v[rows] for k, v in tile(condition, batch).items()}


def condition_for(x: Tensor) -> Condition | None:
    """The condition of a network call on ``x`` (tiled to its batch, on its device), or None."""
    condition = _CONDITION.get()
    if condition is None:
        return None
    return {k: v.to(x.device) for k, v in tile(condition, x.shape[0]).items()}


def table_rows(table: Tensor | Condition, rows: Tensor) -> Condition:
    """The condition of prompt-table ``rows``: a bare table holds prompt embeddings only, a dict
    table (the text-to-image transformers) one batch-first tensor per conditioning input."""
    if isinstance(table, Tensor):
        return {PROMPTS: table[rows]}
    return {k: v[rows] for k, v in table.items()}


def table_size(table: Tensor | Condition) -> int:
    return len(table) if isinstance(table, Tensor) else len(table[PROMPTS])


def labels_for(x: Tensor) -> Tensor | None:
    return (condition_for(x) or {}).get(LABELS)


def num_classes_of(model: nn.Module) -> int:
    """Classes a velocity model is conditioned on (0: none): our nets' ``num_classes``, a diffusers
    UNet's ``num_class_embeds`` less its null class, or a DiT's ``num_embeds_ada_norm`` (its label
    table holds one more row, the null class)."""
    net = getattr(model, "net", model)
    if getattr(net, "num_classes", 0):
        return int(net.num_classes)
    config = getattr(net, "config", None)
    embeds = getattr(config, "num_class_embeds", None)
    if embeds:
        return int(embeds) - 1
    if getattr(config, "norm_type", None) == "ada_norm_zero" and getattr(config, "num_embeds_ada_norm", None):
        return int(config.num_embeds_ada_norm)
    return 0


def drop_labels(labels: Tensor, p: float, num_classes: int) -> Tensor:
    """Labels with a share ``p`` replaced by the null class (classifier-free guidance training)."""
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def null_labels(like: Tensor, num_classes: int) -> Tensor:
    return torch.full((like.shape[0],), num_classes, dtype=torch.long, device=like.device)


def guided(velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, s: Tensor, scale: float, null: Condition) -> Tensor:
    """Classifier-free guidance ``v_null + scale (v_cond - v_null)`` under the current condition,
    ``null`` (batch 1) giving the unconditional prediction; scale 1 or no condition: one call."""
    cond = velocity(x, s)
    if scale == 1.0 or current_condition() is None:
        return cond
    with conditioned({k: v.to(x.device).expand(x.shape[0], *v.shape[1:]) for k, v in null.items()}):
        uncond = velocity(x, s)
    return uncond + scale * (cond - uncond)
