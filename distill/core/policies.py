"""pi-Flow's policies: one network call's output as a velocity field for a whole step (docs/methods.md 8.1).

A policy is built at the step's source ``(x_src, s_src)`` and answers the velocity at any later
``(x, s)`` of the step without another network call. Both kinds predict the denoised image ``x0`` and
turn it into the FM velocity ``v = (x - x0) / s``:

- **GMFlow**: the network's K velocity components, weights and one shared log-std make a Gaussian
  mixture over ``x0`` given ``x_src``; at ``(x, s)`` the policy answers that mixture's posterior mean
  given ``x`` as well (Gaussian conditioning, closed form), so the step bends as the state moves.
- **DX**: the network's N outputs make a grid of ``x0`` over the step's raw time, read by linear
  interpolation (``grid``) or as polynomial coefficients (``polynomial``).

Steps are integrated with Euler substeps of raw time (``total_substeps`` over [0, 1]), as the official
``policy_rollout`` does; no substep calls the network. Times follow the FM convention (1 = noise),
raw time u warped to FM time by the method's shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.core.tensors import append_dims

Warp = Callable[[Tensor], Tensor]


@dataclass
class GaussianMixture:
    """A mixture over x0 per element: means (B, K, C, ...); variances and logweights broadcastable.

    ``logweights`` has size 1 along the dimensions its gate is shared over (the channels of a pixel,
    or a flat vector's elements) and ``variances`` is shared by all components and elements.
    """

    means: Tensor
    variances: Tensor
    logweights: Tensor

    def detach(self) -> GaussianMixture:
        return GaussianMixture(self.means.detach(), self.variances.detach(), self.logweights.detach())


def gm_from_velocity(
    means_u: Tensor, logstds: Tensor, logweights: Tensor, x_src: Tensor, s_src: Tensor
) -> GaussianMixture:
    """The x0 mixture of velocity components at ``(x_src, s_src)``: ``x0 = x_src - s_src u``, the std
    scaled by ``s_src`` (``GMFlowPolicy._u_to_x_0``, Lakonik/piFlow piflow_policies/gmflow.py)."""
    s = append_dims(s_src, means_u.ndim)
    return GaussianMixture(x_src.unsqueeze(1) - s * means_u, (2 * logstds).exp() * s.square(), logweights)


def gm_posterior_mean(gm: GaussianMixture, x_src: Tensor, s_src: Tensor, x: Tensor, s: Tensor, eps: float) -> Tensor:
    """E[x0 | x_src at s_src, x at s] under the mixture prior gm (``gmflow_posterior_mean_jit``,
    Lakonik/piFlow lakonlab/models/diffusions/gmflow.py). Times (B,); x and x_src (B, C, ...).

    With ``a = 1 - s``, the new observation adds precision ``zeta = (a/s)^2 - (a_src/s_src)^2`` and
    information ``nu = a x / s^2 - a_src x_src / s_src^2``; each component's mean and weight update
    by Gaussian conditioning, its weight summed over the elements its gate covers.
    """
    s_src, s = append_dims(s_src.clamp(min=eps), x.ndim), append_dims(s.clamp(min=eps), x.ndim)
    ratio_src, ratio = (1 - s_src) / s_src, (1 - s) / s
    zeta = (ratio.square() - ratio_src.square()).unsqueeze(1)
    nu = (ratio * x / s - ratio_src * x_src / s_src).unsqueeze(1)
    denom = (gm.variances * zeta + 1).clamp(min=eps)
    means = (gm.variances * nu + gm.means) / denom
    shared = [d for d in range(2, gm.means.ndim) if gm.logweights.shape[d] == 1 and gm.means.shape[d] > 1]
    delta = (gm.means * (nu - 0.5 * zeta * gm.means)).sum(dim=shared, keepdim=True) / denom
    weights = torch.softmax(gm.logweights + delta, dim=1)
    return (weights * means).sum(dim=1)


def dx_interpolate(grid: Tensor, position: Tensor) -> Tensor:
    """Linear interpolation along the grid axis: grid (B, N, ...), position (B, ...) in [0, 1]
    (``DXPolicy._interpolate``, Lakonik/piFlow piflow_policies/dx.py)."""
    n = grid.shape[1]
    if n < 2:
        return grid[:, 0]
    t = position.clamp(0, 1) * (n - 1)
    lower = t.floor().long().clamp(0, n - 2)
    index = torch.stack([lower, lower + 1], dim=1).expand(-1, -1, *grid.shape[2:])
    pair = torch.gather(grid, 1, index)
    return (lower + 1 - t) * pair[:, 0] + (t - lower) * pair[:, 1]


@dataclass
class SubstepPolicy:
    """A velocity field integrated with Euler substeps of raw time (``distill.core.imitation.Policy``).

    Subclasses give ``velocity``. ``advance`` takes ``round((u_a - u_b) total_substeps)`` equal raw
    substeps (at least one) per sample, as ``policy_rollout`` (Lakonik/piFlow piflow.py).
    """

    x_src: Tensor
    s_src: Tensor
    warp: Warp
    total_substeps: int
    eps: float = 1e-6  # the velocity's clamp on s (the training policy's default)
    mean_eps: float = 1e-4  # the mean velocity's clamp on the FM span (train_cfg eps)

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def advance(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        substeps = torch.round((u_a - u_b) * self.total_substeps).long().clamp(min=1)
        size = (u_a - u_b) / substeps
        u, s = u_a, self.warp(u_a)
        for i in range(int(substeps.max())):
            v = self.velocity(x, u)
            u_next = (u - size).clamp(min=0)
            s_next = self.warp(u_next)
            active = substeps > i
            x = torch.where(append_dims(active, x.ndim), x + append_dims(s_next - s, x.ndim) * v, x)
            u, s = torch.where(active, u_next, u), torch.where(active, s_next, s)
        return x

    def mean_velocity(self, x: Tensor, u_a: Tensor, u_b: Tensor) -> Tensor:
        span = (self.warp(u_a) - self.warp(u_b)).clamp(min=self.mean_eps)
        return (x - self.advance(x, u_a, u_b)) / append_dims(span, x.ndim)

    def from_x0(self, x: Tensor, x0: Tensor, s: Tensor) -> Tensor:
        return (x - x0) / append_dims(s.clamp(min=self.eps), x.ndim)


@dataclass
class GMFlowPolicy(SubstepPolicy):
    """The x0 mixture's posterior mean as the step's denoiser (``GMFlowPolicy.pi``)."""

    mixture: GaussianMixture | None = None

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        s = self.warp(u)
        x0 = gm_posterior_mean(self.mixture, self.x_src, self.s_src, x, s, self.eps)
        return self.from_x0(x, x0, s)


@dataclass
class DXPolicy(SubstepPolicy):
    """A grid (or polynomial) of x0 over the step's raw time (``DXPolicy.pi``).

    ``grid`` (B, N, ...) covers raw time ``[u_src - segment, u_src]`` (clamped at 0), point 0 at the
    clean end; ``polynomial`` reads it as coefficients of powers of ``u_src - u``.
    """

    grid: Tensor | None = None
    u_src: Tensor | None = None
    segment: float = 1.0
    mode: str = "grid"

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        u_src, u_now = append_dims(self.u_src, x.ndim), append_dims(u, x.ndim)
        if self.mode == "polynomial":
            powers = torch.stack([(u_src - u_now) ** i for i in range(self.grid.shape[1])], dim=1)
            x0 = (powers * self.grid).sum(dim=1)
        else:
            u_dst = (u_src - self.segment).clamp(min=0)
            x0 = dx_interpolate(self.grid, (u_now - u_dst) / (u_src - u_dst).clamp(min=self.eps))
        return self.from_x0(x, x0, self.warp(u))
