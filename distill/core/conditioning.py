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

``guidance_scale`` (B,) float is each sample's classifier-free guidance scale w: a teacher guides
each sample at its own w, and a student built with a guidance input (``guidance_embed``) reads it,
so one student serves a range of w (docs/methods.md 13).
"""

from __future__ import annotations

import math
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
GUIDANCE = "guidance_scale"

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


def guidance_for(x: Tensor) -> Tensor | None:
    """The per-sample guidance scales (B,) of a network call on ``x``, or None where none were given."""
    return (condition_for(x) or {}).get(GUIDANCE)


def guidance_of(x: Tensor, default: float) -> Tensor:
    """The guidance scales (B,) a guidance-input network reads for ``x``: the condition's, else ``default``."""
    w = guidance_for(x)
    return torch.full((x.shape[0],), default, device=x.device) if w is None else w


def draw_guidance(n: int, low: float, high: float, device: torch.device | str = "cpu") -> Tensor:
    """``n`` guidance scales, log-uniform on ``[low, high]`` (improved MeanFlow's ``sample_cfg_scale`` at
    ``cfg_beta=1``: ``w = (1 + s_max)^u``, i.e. log-uniform on [1, 1 + s_max]): as many draws between 1
    and 2 as between 2 and 4, where a little more guidance changes samples the most."""
    u = torch.rand(n, device=device, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low))).float()


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


def guided(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, s: Tensor, scale: float | Tensor, null: Condition
) -> Tensor:
    """Classifier-free guidance ``v_null + scale (v_cond - v_null)`` under the current condition,
    ``null`` (batch 1) giving the unconditional prediction; ``scale`` a number or one per sample (B,);
    a scale of 1 or no condition: one call."""
    cond = velocity(x, s)
    if current_condition() is None or (not isinstance(scale, Tensor) and scale == 1.0):
        return cond
    with conditioned({k: v.to(x.device).expand(x.shape[0], *v.shape[1:]) for k, v in null.items()}):
        uncond = velocity(x, s)
    if isinstance(scale, Tensor):
        scale = scale.to(device=x.device, dtype=cond.dtype).view(-1, *[1] * (x.ndim - 1))
    return uncond + scale * (cond - uncond)
