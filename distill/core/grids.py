"""Sampling grids: decreasing float64 FM times of length n + 1, from (about) 1 down to exactly 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from distill.core.time_sampling import shift_time


def _end_at_zero(grid: Tensor) -> Tensor:
    grid[-1] = 0.0  # exactly, whatever rounding the formula did
    return grid


def uniform_grid(n: int) -> Tensor:
    """``linspace(1, 0, n + 1)`` (docs/methods.md 1.6, FM Euler)."""
    return _end_at_zero(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64))


def shifted_grid(n: int, shift: float = 3.0) -> Tensor:
    """Uniform grid pushed towards noise by ``s' = k s / (1 + (k - 1) s)`` (SD3 shift)."""
    return _end_at_zero(shift_time(uniform_grid(n), shift))


def karras_grid(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM grid (docs/methods.md 1.3): n Karras sigmas from sigma_max to sigma_min plus 0, as
    ``s = sigma / (1 + sigma)``."""
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    grid = torch.cat([sigmas / (1 + sigmas), torch.zeros(1, dtype=torch.float64)])
    return grid


def cosine_grid(n: int) -> Tensor:
    """Uniform VP-cosine time u in [1, 0] mapped to FM: ``s = sin(pi u / 2) / (cos + sin)``."""
    u = 0.5 * math.pi * torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
    grid = torch.sin(u) / (torch.cos(u) + torch.sin(u))
    grid[0] = 1.0  # cos(pi / 2) is 6e-17 in float64
    return _end_at_zero(grid)


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_grid,
    "shifted": shifted_grid,
    "karras": karras_grid,
    "cosine": cosine_grid,
}


def ddim_timesteps(num_train_timesteps: int, n: int) -> Tensor:
    """LCM/PCM's ``DDIMSolver`` timesteps ``arange(1, n + 1) * (T // n) - 1`` (SD, n = 50: 19, 39, ..., 999)."""
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"a DDIM grid of {n} steps needs 1 <= n <= the teacher's {num_train_timesteps} timesteps")
    return torch.arange(1, n + 1, dtype=torch.float64) * (num_train_timesteps // n) - 1


def ddim_grid_timesteps(num_train_timesteps: int, n: int) -> Tensor:
    """The n + 1 points of LCM/PCM's ``DDIMSolver``, decreasing: its timesteps, then its lowest
    ``ddim_timesteps_prev[0] = 0`` (SD, n = 50: 999, 979, ..., 19, 0)."""
    return torch.cat([ddim_timesteps(num_train_timesteps, n).flip(0), torch.zeros(1, dtype=torch.float64)])


def ddim_grid(process: Any, n: int) -> Tensor:
    """``ddim_grid_timesteps`` of a discrete teacher ``process`` (``VPDiscrete``) as FM times,
    decreasing. Unlike the other grids it spans ``[s(0), s(T - 1)]`` (SD: [0.028, 0.936]), not [0, 1]."""
    steps = ddim_grid_timesteps(int(process.num_train_timesteps), n)
    return process.to_fm_time(steps).to(torch.float64)


def make_grid(name: str, n: int, **kwargs: float) -> Tensor:
    """Grid ``name`` with n steps (n + 1 points); kwargs go to the grid function."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; valid names: {sorted(GRIDS)}")
    return GRIDS[name](n, **kwargs)
