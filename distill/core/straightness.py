"""Straightness of a flow and its noise-to-data couplings (Liu et al. 2022; docs/methods.md 10.1).

Reflow retrains a flow on the pairs ``(eps, ODE(eps))`` of the previous flow; the straightness
metric says how far the simulated trajectory bends away from its chord (0: a straight line, which
one Euler step integrates exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill.core.grids import make_grid
from distill.core.prediction import VelocityFn
from distill.core.samplers import SAMPLERS, prior_state


def path_straightness(states: Sequence[Tensor], grid: Tensor) -> Tensor:
    """``S = sum_i (s_i - s_{i+1}) E||(x_1 - x_0) - dx/ds||^2`` of a piecewise-linear path.

    Args:
        states: (B, ...) states at the times of ``grid``, first at s = 1 (noise), last at s = 0.
        grid: decreasing FM times, ``len(states)`` of them.

    Returns:
        A scalar: squared norm summed over the non-batch dims, mean over samples. dx/ds on
        interval i is the secant ``(x_i - x_{i+1}) / (s_i - s_{i+1})``: the exact velocity for Euler,
        Heun's averaged velocity for Heun.
    """
    chord = (states[0] - states[-1]).flatten(1)
    total = chord.new_zeros(())
    for i in range(len(states) - 1):
        ds = grid[i] - grid[i + 1]
        slope = (states[i] - states[i + 1]).flatten(1) / ds
        total = total + ds * (chord - slope).pow(2).sum(1).mean()
    return total


@torch.no_grad()
def straightness(model: VelocityFn, noise: Tensor, grid: Tensor, sampler: str = "euler") -> Tensor:
    """Straightness of ``model``'s ODE path from ``noise`` (at s = grid[0] = 1) along ``grid``."""
    grid = grid.to(noise.device, noise.dtype)
    states = [prior_state(noise, grid[0])]
    SAMPLERS[sampler](model, states[0], grid, callback=lambda i, x, s: states.append(x))
    return path_straightness(states, grid)


@torch.no_grad()
def ode_pairs(model: VelocityFn, noise: Tensor, steps: int, sampler: str = "euler", grid: str = "uniform") -> Tensor:
    """The coupled endpoints ``x_hat = ODE(noise)`` reflow trains on (``steps`` steps of ``sampler``)."""
    return SAMPLERS[sampler](model, prior_state(noise), make_grid(grid, steps).to(noise))


@torch.no_grad()
def ode_states(
    model: VelocityFn,
    noise: Tensor,
    times: Sequence[float],
    steps: int,
    sampler: str = "euler",
    grid: str = "uniform",
) -> Tensor:
    """States of ``model``'s ODE from ``noise`` (at s = 1) at the FM ``times``: (len(times), B, ...).

    The times join the ``steps``-step grid, so the solver lands on each exactly (0: the endpoint).
    """
    if any(not 0.0 <= t < 1.0 for t in times):
        raise ValueError(f"record times {list(times)} must lie in [0, 1)")
    wanted = torch.tensor(list(times), dtype=torch.float64)
    full = torch.cat([make_grid(grid, steps), wanted]).unique(sorted=True).flip(0)
    positions = [int((full == t).nonzero()) for t in wanted]
    states: list[Tensor | None] = [None] * len(times)

    def record(i: int, x: Tensor, s: Tensor) -> None:
        for k, position in enumerate(positions):
            if position == i + 1:
                states[k] = x

    SAMPLERS[sampler](model, prior_state(noise), full.to(noise), callback=record)
    return torch.stack(states)
