"""Policy imitation: pull a few-step student's policy onto the teacher along the policy's own path.

pi-Flow (docs/methods.md 8.1) and ArcFlow (docs/methods.md 8) share this training step. At each of
its few steps the student makes one network call at ``(x_src, s_src)`` and returns a *policy*: a
velocity field for the whole step that moves a state without further network calls (a Gaussian
mixture or a grid of denoised images integrated in substeps, or momentum components integrated in
closed form). One step's loss visits a few random states inside the step, reached by moving with the
detached policy (and, early in training, with teacher Euler hops), and at each state pulls the
policy's mean velocity over a short window onto the teacher's velocity there. The geometry lives in
raw time u (uniform steps, uniform state draws); ``warp`` maps it to the FM time the networks read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from distill.core.losses import per_sample_mse
from distill.core.tensors import append_dims, batch_time

Warp = Callable[[Tensor], Tensor]


class Policy(Protocol):
    """One student step's velocity field; all times are raw times u, (B,) tensors, ``u_b <= u_a``."""

    def advance(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        """Move ``x`` from ``u_a`` to ``u_b`` along the field."""
        ...

    def mean_velocity(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        """The displacement from ``u_a`` to ``u_b`` over the FM-time span it covers."""
        ...

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        """The field at ``(x, u)``."""
        ...


def window_length(length: float, window_substeps: int, total_substeps: int) -> float:
    """Raw-time length of the mean-velocity window in a step of raw ``length``: ``window_substeps``
    of the step's ``round(length * total_substeps)`` substeps, at most the step (Lakonik/piFlow
    piflow.py piid_segment; pnotp/ArcFlow arcflow.py:134-137). 2 NFE, 3 of 128: 3/128."""
    substeps = max(1, round(length * total_substeps))
    return min(window_substeps * length / substeps, length)


def window_lengths(length: Tensor, window_substeps: int, total_substeps: int) -> Tensor:
    """``window_length`` per sample: ``length`` (B,) -> (B,)."""
    substeps = torch.round(length * total_substeps).clamp(min=1)
    return torch.minimum(window_substeps * length / substeps, length)


def segment_intervals(batch: int, states: int, share: float, span: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """Raw-time moves that reach a step's ``states`` intermediate states (piflow.py piid_segment).

    The policy's moves are the gaps of ``states`` sorted uniforms on ``[0, (1 - share) span]`` (so
    they sum to at most that); the teacher's hops split ``share * span`` at ``states - 1`` sorted
    uniforms (so they sum to it exactly). ``span`` is the step's raw length less the window.
    The uniforms are drawn in float32 in the official order, then computed in ``like``'s dtype.

    Returns:
        (policy, teacher): each (batch, states), on ``like``'s device and dtype.
    """

    def uniforms(n: int) -> Tensor:
        return torch.rand((batch, n), device=like.device).to(like.dtype)

    zeros, ones = like.new_zeros((batch, 1)), like.new_ones((batch, 1))
    span = span[:, None]
    moves = (uniforms(states) * ((1 - share) * span)).sort(dim=-1).values
    moves = torch.diff(moves, dim=-1, prepend=zeros)
    cuts = uniforms(states - 1).sort(dim=-1).values
    hops = torch.diff(cuts, dim=-1, prepend=zeros, append=ones) * (share * span)
    return moves, hops


def window_velocity(policy: Policy, x: Tensor, u_a: Tensor, u_end: Tensor, total_substeps: int) -> Tensor:
    """The policy's mean velocity over ``[u_end, u_a]``; where that span rounds to under 2 substeps, its
    local velocity at ``u_a`` instead, as both official codes do (``policy_average_u``)."""
    short = torch.round((u_a - u_end) * total_substeps) < 2
    if not short.any():
        return policy.mean_velocity(x, u_a, u_end)
    local = policy.velocity(x, u_a)
    if short.all():
        return local
    return torch.where(append_dims(short, x.ndim), local, policy.mean_velocity(x, u_a, u_end))


def imitation_segment(
    x: Tensor,
    u_src: float | Tensor,
    length: float | Tensor,
    share: float,
    policy: Policy,
    rollout: Policy,
    teacher: nn.Module,
    warp: Warp,
    states: int,
    window_substeps: int,
    total_substeps: int,
) -> tuple[Tensor, Tensor]:
    """One student step from raw time ``u_src`` over raw ``length`` (floats, or (B,) per sample), as
    ``piid_segment`` (Lakonik/piFlow lakonlab/models/diffusions/piflow.py). Returns the per-sample
    squared error averaged over the step's states, (B,), and the detached end state.

    ``rollout`` is the detached policy (with any component dropout) that moves the states; ``policy``
    carries the gradients. States are reached by alternating rollout moves (raw total at most
    ``(1 - share)(length - window)``) and teacher Euler hops that reuse the target just computed (raw
    total ``share (length - window)``), so mixing costs no extra teacher call. At each state ``u_a``
    the policy's mean velocity over ``[u_b - window, u_a]`` is pulled onto the teacher's velocity.
    """
    b = x.shape[0]
    u, length = batch_time(u_src, x), batch_time(length, x)
    window = window_lengths(length, window_substeps, total_substeps)
    moves, hops = segment_intervals(b, states, share, length - window, x)
    error = x.new_zeros(b)
    for j in range(states):
        u_a = (u - moves[:, j]).clamp(min=0)
        u_b = (u_a - hops[:, j]).clamp(min=0)
        s_a = warp(u_a)
        with torch.no_grad():
            x_a = rollout.advance(x, u, u_a)
            target = teacher(x_a, s_a)
        predicted = window_velocity(policy, x_a, u_a, (u_b - window).clamp(min=0), total_substeps)
        error = error + per_sample_mse(predicted, target)
        x = x_a + append_dims(warp(u_b) - s_a, x.ndim) * target  # the teacher's Euler hop (empty when share = 0)
        u = u_b
    with torch.no_grad():
        x_end = rollout.advance(x, u, batch_time(u_src, x) - length)
    return error / states, x_end
