"""Momentum-mixture velocity fields that integrate in closed form (ArcFlow, docs/methods.md 8).

One network call at ``(x_src, s_src)`` gives K components per element: velocities ``v_k``,
mixture weights ``w_k`` (a softmax over k) and rates ``gamma_k`` (component 0 has rate 0). For any
later time ``s <= s_src`` of the same step the velocity is

    v(s) = sum_k w_k v_k exp(gamma_k (s_src - s)),

each component a momentum process that speeds up (gamma > 0) or slows down (gamma < 0) as the
sample denoises. With ``tau = s_src - s`` the displacement from ``s_a`` to ``s_b < s_a`` is exact:

    x_b = x_a - sum_k w_k v_k exp(gamma_k tau_a) (s_a - s_b) phi(gamma_k (s_a - s_b)),
    phi(u) = expm1(u) / u,  phi(0) = 1,

so a step follows an arc with no discretisation error. Times are FM times (1 = noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.core.tensors import append_dims

SERIES_BELOW = 1e-3  # |u| below this: phi by its Taylor series (error ~ u^4 / 120 < 1e-14)


def phi(u: Tensor) -> Tensor:
    """``expm1(u) / u``, exact through u = 0: the ArcFlow code clamps |u| to 1e-4 instead, which
    is off by up to 5e-5; a cubic Taylor series near zero is exact to rounding and as smooth."""
    small = u.abs() < SERIES_BELOW
    safe = torch.where(small, torch.ones_like(u), u)
    series = 1 + u / 2 * (1 + u / 3 * (1 + u / 4))
    return torch.where(small, series, torch.expm1(safe) / safe)


@dataclass
class Momentum:
    """One step's mixture: means ``(B, K, *shape)``; weights and rates broadcastable to it.

    ``weights`` already sum to one over K; ``rates[:, 0]`` is zero (the constant component).
    """

    means: Tensor
    weights: Tensor
    rates: Tensor

    def detach(self) -> Momentum:
        return Momentum(self.means.detach(), self.weights.detach(), self.rates.detach())


def _per_sample(t: Tensor, m: Momentum) -> Tensor:
    """A (B,) time tensor shaped to broadcast against the (B, K, *shape) components."""
    return append_dims(t, m.means.ndim)


def velocity_at(m: Momentum, tau: Tensor) -> Tensor:
    """The mixture velocity ``tau = s_src - s`` into the step; tau: (B,)."""
    growth = torch.exp(m.rates * _per_sample(tau, m))
    return (m.weights * m.means * growth).sum(dim=1)


def average_velocity(m: Momentum, tau: Tensor, delta: Tensor) -> Tensor:
    """Mean velocity over ``[s_a - delta, s_a]`` where ``s_a = s_src - tau`` (both (B,), delta > 0)."""
    tau, delta = _per_sample(tau, m), _per_sample(delta, m)
    growth = torch.exp(m.rates * tau) * phi(m.rates * delta)
    return (m.weights * m.means * growth).sum(dim=1)


def advance(x: Tensor, m: Momentum, s_src: Tensor, s_a: Tensor, s_b: Tensor) -> Tensor:
    """Move ``x`` (at ``s_a``) to ``s_b <= s_a`` along the step's field, exactly; times (B,)."""
    delta = s_a - s_b
    return x - append_dims(delta, x.ndim) * average_velocity(m, s_src - s_a, delta)


def drop_components(m: Momentum, p: float, generator: torch.Generator | None = None) -> Momentum:
    """ArcFlow's component dropout on rollout policies: each sample drops each component with
    probability ``p``, the same for every element (a spatially coherent policy); a sample that
    would drop all keeps all. Weights are renormalised over the survivors.

    As ``ArcFlowPolicy.dropout_`` (pnotp/ArcFlow lakonlab/models/diffusions/policies/arcflow.py:96-106):
    one draw per (sample, component), a mask of shape (B, K, 1, ..., 1).
    """
    if p <= 0:
        return m
    batch, k = m.means.shape[:2]
    drop = torch.rand((batch, k), generator=generator, device=m.weights.device) < p
    drop &= ~drop.all(dim=1, keepdim=True)
    keep = (~drop).view(batch, k, *[1] * (m.means.ndim - 2))
    weights = m.weights * keep
    return Momentum(m.means, weights / weights.sum(dim=1, keepdim=True), m.rates)


@dataclass
class MomentumPolicy:
    """A step's mixture as an imitation policy (``distill.core.imitation.Policy``): raw times in,
    warped to FM time by ``warp``, the step's source at FM time ``s_src`` (B,)."""

    mixture: Momentum
    s_src: Tensor
    warp: Callable[[Tensor], Tensor]

    def advance(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        return advance(x, self.mixture, self.s_src, self.warp(u_a), self.warp(u_b))

    def mean_velocity(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        s_a = self.warp(u_a)
        return average_velocity(self.mixture, self.s_src - s_a, s_a - self.warp(u_b))

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        return velocity_at(self.mixture, self.s_src - self.warp(u))
