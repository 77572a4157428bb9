"""ODE samplers in FM coordinates, k-diffusion style.

Every sampler is ``sample_<name>(model, x, grid, *, progress=False, callback=None) -> x_end``:
``model(x, s) -> v`` is a canonical velocity model, ``x`` (B, ...) is the state at ``grid[0]``
and ``grid`` a decreasing 1-D tensor of FM times (usually ending at 0, see ``distill.core.grids``).
``callback(i, x, s)`` is called after step i with the new state and its time ``grid[i + 1]``.
Time tensors given to the model are (B,) in x's dtype.

Few-step students sample by ``sample_flow_map`` with a flow map; a ``SamplingPlan`` states such a
walk in a scheduler's terms, and ``follow_plan`` runs it (``Method.sample``'s default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from tqdm.auto import trange

from distill.core.grids import make_grid
from distill.core.prediction import VelocityFn, consistency_fn, velocity_to_x0
from distill.core.tensors import append_dims, batch_time

FlowMap = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Student ``flow_map(x, s, s_next) -> state at s_next``, times of shape (B,)."""
Callback = Callable[[int, Tensor, Tensor], None]
Renoise = Callable[[int], Tensor]
"""Fresh unit noise for re-noising step i, of the samples' shape (per-sample seeded in evaluation)."""


def prior_state(noise: Tensor, s0: float | Tensor = 1.0) -> Tensor:
    """Start state ``s0 * noise`` at FM time s0: EDM's ``x = sigma_max z`` mapped to FM (exact at s0 = 1)."""
    return s0 * noise


def sample_euler(
    model: VelocityFn,
    x: Tensor,
    grid: Tensor,
    *,
    progress: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Euler in FM time (docs/methods.md 1.6); identical to DDIM in every parameterization."""
    grid = grid.to(x.device, x.dtype)
    for i in trange(len(grid) - 1, disable=not progress):
        s, s_next = grid[i], grid[i + 1]
        x = x + (s_next - s) * model(x, batch_time(s, x))
        if callback is not None:
            callback(i, x, s_next)
    return x


def sample_heun(
    model: VelocityFn,
    x: Tensor,
    grid: Tensor,
    *,
    progress: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic Heun, EDM Alg. 1 (Karras et al. 2022) in FM time; Euler on a step ending at s = 0."""
    grid = grid.to(x.device, x.dtype)
    for i in trange(len(grid) - 1, disable=not progress):
        s, s_next = grid[i], grid[i + 1]
        d = model(x, batch_time(s, x))
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = model(x_euler, batch_time(s_next, x))
            x = x + (s_next - s) * 0.5 * (d + d_next)
        if callback is not None:
            callback(i, x, s_next)
    return x


def _lambda(s: float) -> float:
    """``log(alpha / sigma) = log((1 - s) / s)``, +-inf at the ends."""
    if s <= 0.0:
        return math.inf
    if s >= 1.0:
        return -math.inf
    return math.log1p(-s) - math.log(s)


def sample_dpmpp_2m(
    model: VelocityFn,
    x: Tensor,
    grid: Tensor,
    *,
    progress: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022), with alpha = 1 - s, sigma = s (docs/methods.md 1.6)."""
    times = [float(v) for v in grid]
    x0_prev: Tensor | None = None
    h_prev = math.inf
    for i in trange(len(times) - 1, disable=not progress):
        s, s_next = times[i], times[i + 1]
        x0 = x - s * model(x, batch_time(s, x))
        h = _lambda(s_next) - _lambda(s)
        # x_next = (sigma'/sigma) x + alpha' (1 - e^{-h}) D, written without lambda so s = 1 and
        # s_next = 0 stay finite: alpha' (1 - e^{-h}) = alpha' - (sigma'/sigma) alpha.
        ratio = s_next / s
        coef = (1 - s_next) - ratio * (1 - s)
        # First order on the first step, after an infinite step (from s = 1) and on the last step.
        if x0_prev is None or s_next == 0 or not math.isfinite(h_prev):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = ratio * x + coef * d
        x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, x, grid[i + 1].to(x))
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def _check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {sorted(SAMPLERS)}")


def sampler_nfe(name: str, steps: int) -> int:
    """Model evaluations of ``steps`` steps of sampler ``name`` on a grid ending at 0."""
    _check_sampler(name)
    return 2 * steps - 1 if name == "heun" else steps


def steps_for_nfe(name: str, nfe: int) -> int | None:
    """Steps that spend exactly ``nfe`` evaluations, or None if no step count does (heun: even nfe)."""
    _check_sampler(name)
    if nfe < 1:
        return None
    if name == "heun":
        return (nfe + 1) // 2 if nfe % 2 == 1 else None
    return nfe


def sample_flow_map(
    flow_map: FlowMap,
    x: Tensor,
    grid: Tensor,
    *,
    renoise_fn: Callable[[int], Tensor] | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Few-step student sampling: chained jumps, or multistep consistency sampling (Song et al. 2023).

    Args:
        flow_map: ``flow_map(x, s, s_next)`` -> state at s_next.
        x: (B, ...) state at ``grid[0]``.
        grid: decreasing FM times.
        renoise_fn: None chains ``x = flow_map(x, s, s_next)``. Otherwise each step jumps to data,
            ``x0 = flow_map(x, s, 0)``, and re-noises to the next time with fresh noise
            ``renoise_fn(i)``: ``x = (1 - s_next) x0 + s_next noise`` (no noise when s_next = 0).
        progress: show a tqdm bar.
        callback: ``callback(i, x, s_next)`` after each step.

    Returns:
        (B, ...) state at ``grid[-1]``.
    """
    grid = grid.to(x.device, x.dtype)
    zero = batch_time(0.0, x)
    for i in trange(len(grid) - 1, disable=not progress):
        s, s_next = grid[i], grid[i + 1]
        if renoise_fn is None:
            x = flow_map(x, batch_time(s, x), batch_time(s_next, x))
        else:
            x0 = flow_map(x, batch_time(s, x), zero)
            x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * renoise_fn(i)
        if callback is not None:
            callback(i, x, s_next)
    return x


@torch.no_grad()
def heun_step(teacher: nn.Module, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One teacher Heun step from ``s`` to ``s_next`` (both (B,), s_next > 0) in FM coordinates (s, v)."""
    h = append_dims(s_next - s, x.ndim)
    v = teacher(x, s)
    x_euler = x + h * v
    return x + h * 0.5 * (v + teacher(x_euler, s_next))


@torch.no_grad()
def edm_heun_step(teacher: nn.Module, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """CD's own step (``karras_diffusion.py`` ``heun_solver``): Heun in EDM coordinates (sigma, d).

    ``x_sigma = x_s / (1 - s)`` with ``sigma = s / (1 - s)`` and ``d = (x_sigma - D) / sigma``. The
    Euler part equals the FM one (both are DDIM); the correction averages d instead of v, so the
    result differs from ``heun_step`` at second order. Needs s, s_next in (0, 1): (B,) each.
    """
    a, b = append_dims(s, x.ndim), append_dims(s_next, x.ndim)
    sigma, sigma_next = a / (1 - a), b / (1 - b)
    x_sigma = x / (1 - a)
    d = (x_sigma - velocity_to_x0(x, s, teacher(x, s))) / sigma
    x_euler = x_sigma + (sigma_next - sigma) * d
    x_euler_fm = (1 - b) * x_euler
    d_next = (x_euler - velocity_to_x0(x_euler_fm, s_next, teacher(x_euler_fm, s_next))) / sigma_next
    return (1 - b) * (x_sigma + 0.5 * (sigma_next - sigma) * (d + d_next))


def ddim_step(model: VelocityFn, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One DDIM (= flow-matching Euler) step of a velocity model from ``s`` to ``s_next`` (both (B,)).
    As a flow map (``partial(ddim_step, model)``) it is the map PD students learn."""
    return x + append_dims(s_next - s, x.ndim) * model(x, s)


def consistency_jump(model: VelocityFn, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """The flow map of multistep consistency sampling: a jump to data, whatever ``s_next``
    (``sample_flow_map`` re-noises to it)."""
    return consistency_fn(model, x, s)


@torch.no_grad()
def multistep_consistency_sample(
    model: VelocityFn, noise: Tensor, times: Tensor, renoise: Renoise | None = None
) -> Tensor:
    """Multistep consistency sampling (docs/methods.md 3.6) from ``times[0] * noise``: jump to data,
    re-noise to the next time with ``renoise(i)`` (else the global RNG), repeat."""
    times = times.to(noise)
    renoise = renoise or (lambda i: torch.randn_like(noise))
    return sample_flow_map(partial(consistency_jump, model), prior_state(noise, times[0]), times, renoise_fn=renoise)


def consistency_sampling_times(
    start: float | Tensor, nfe: int, grid: str = "cosine", sigmas: Sequence[float] | None = None
) -> Tensor:
    """``[start, re-noising times..., 0]``: the first ``nfe - 1`` of ``sigmas`` (EDM sigmas, mapped to
    FM time) where there are that many, else the interior points of an ``nfe``-step ``grid``."""
    if sigmas is not None and nfe - 1 <= len(sigmas):
        interior = torch.tensor(list(sigmas[: nfe - 1]), dtype=torch.float64)
        interior = interior / (1 + interior)
    else:
        interior = make_grid(grid, nfe)[1:-1]
    start = torch.as_tensor(start, dtype=interior.dtype).reshape(1)
    return torch.cat([start, interior, torch.zeros(1, dtype=interior.dtype)])


@dataclass
class SamplingPlan:
    """How a student samples at one NFE, in the terms of diffusers' ``FlowMatchEulerDiscreteScheduler``
    (what ``distill-export`` writes): the velocity network, the FM times, and whether each step is
    an Euler step (``renoise=False``) or a jump to data re-noised to the next time (its
    ``stochastic_sampling``, i.e. multistep consistency sampling). Sampling starts at
    ``sigmas[0] * noise``."""

    network: nn.Module
    sigmas: list[float]
    renoise: bool


@torch.no_grad()
def follow_plan(plan: SamplingPlan, noise: Tensor, renoise: Renoise | None = None) -> Tensor:
    """Run a ``SamplingPlan`` exactly as the scheduler it describes would: Euler steps through
    ``plan.sigmas``, or multistep consistency sampling where the plan re-noises."""
    sigmas = torch.tensor(plan.sigmas, dtype=torch.float64).to(noise)
    if plan.renoise:
        return multistep_consistency_sample(plan.network, noise, sigmas, renoise)
    return sample_flow_map(partial(ddim_step, plan.network), prior_state(noise, sigmas[0]), sigmas)
