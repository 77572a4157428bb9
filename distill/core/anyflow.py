"""AnyFlow's pieces (Gu et al. 2026; docs/methods.md 10.4) as pure functions of an average-velocity
model ``u(z, r, t)`` (FM time, noise at 1; ``z_r = z_t - (t - r) u``).

Stage 1 trains the flow map on three kinds of time pair in fixed shares of the batch: ``r = t``
(plain flow matching, the "diffusion" rows), ``r = 0`` (one jump to data, the "consistency" rows)
and a free ``r < t``; the MeanFlow target's time derivative is a central difference. Stage 2 rolls
the map out from noise with a step count drawn per batch, in at most three calls: one jump to the
chosen step, that step, one jump to data (the flow map's own shortcut for the steps in between).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distill.core.errors import ConfigError
from distill.core.ranks import agreed_randint
from distill.core.samplers import FlowMap
from distill.core.tensors import append_dims, batch_time
from distill.core.time_sampling import shift_time

AverageVelocity = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``u(z, r, t)``: z (B, ...), r and t (B,) FM times with r <= t."""

TIME_WEIGHTS = ("beta08", "gaussian", "uniform")
WEIGHT_GRID_STEPS = 1000  # the scheduler's num_train_timesteps: the weights are a table on its grid


def check_shares(diffusion_ratio: float, consistency_ratio: float) -> None:
    """Refuse shares of the r = t and r = 0 rows that are negative or sum above 1."""
    if diffusion_ratio < 0 or consistency_ratio < 0 or diffusion_ratio + consistency_ratio > 1:
        raise ConfigError(
            f"method.objective.diffusion_ratio={diffusion_ratio} and consistency_ratio={consistency_ratio} "
            "must be >= 0 with a sum <= 1 (AnyFlow: 0.5 and 0.25)"
        )


def sample_flowmap_times(
    n: int,
    diffusion_ratio: float,
    consistency_ratio: float,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(r, t, is_diffusion)``, each (n,): two uniform times sorted so t >= r, then the first
    ``round(diffusion_ratio n)`` rows get r = t and the next ``round(consistency_ratio n)`` rows r = 0;
    both times then take the SD3 ``shift`` (AnyFlow ``trainer_wan_anyflow_pretrain.py:sample_timestep``,
    by row index, as there on one device)."""
    check_shares(diffusion_ratio, consistency_ratio)
    t1 = torch.rand(n, device=device, dtype=dtype)
    t2 = torch.rand(n, device=device, dtype=dtype)
    t, r = torch.maximum(t1, t2), torch.minimum(t1, t2)
    index = torch.arange(n, device=device)
    n_diffusion, n_consistency = round(diffusion_ratio * n), round(consistency_ratio * n)
    is_diffusion = index < n_diffusion
    is_consistency = (index >= n_diffusion) & (index < n_diffusion + n_consistency)
    r = torch.where(is_diffusion, t, torch.where(is_consistency, torch.zeros_like(r), r))
    return shift_time(r, shift), shift_time(t, shift), is_diffusion


def time_weight_table(kind: str, shift: float = 1.0, steps: int = WEIGHT_GRID_STEPS) -> tuple[Tensor, Tensor]:
    """``(grid, weights)``: the scheduler's float64 grid of FM times (``shift_time(linspace(1, 0, steps + 1))``)
    and the loss weight at each point, normalised to sum to ``steps`` (``beta08``: ``t (1 - t)^0.5``,
    AnyFlow's; ``gaussian``: ``exp(-2 (t - 1/2)^2)`` less its minimum; ``uniform``: 1)
    (``scheduling_flowmap_euler_discrete.py:set_train_weight``)."""
    if kind not in TIME_WEIGHTS:
        raise ConfigError(f"method.objective.time_weight={kind!r}; choose one of {TIME_WEIGHTS}")
    grid = shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    if kind == "uniform":
        return grid, torch.ones_like(grid)
    if kind == "gaussian":
        y = torch.exp(-2 * (grid - 0.5) ** 2)
        y = y - y.min()
    else:
        y = grid * (1 - grid) ** 0.5
    return grid, y * (steps / y.sum())


def time_weight(t: Tensor, grid: Tensor, weights: Tensor) -> Tensor:
    """The table's weight at the grid point nearest each FM time t (B,) (``get_train_weight``)."""
    index = (grid.to(t.device)[:, None] - t.double().flatten()[None, :]).abs().argmin(dim=0)
    return weights.to(t.device)[index].reshape(t.shape).to(t.dtype)


def central_difference_target(model: AverageVelocity, z: Tensor, r: Tensor, t: Tensor, v: Tensor, h: float) -> Tensor:
    """The MeanFlow target ``v - (t - r) du/dt`` with ``du/dt`` along ``(v, 0, 1)`` by a central
    difference over ``[t - h, t + h]`` (not clamped to [0, 1], as AnyFlow's ``compute_central_difference``),
    without gradient. z, v: (B, ...); r, t: (B,)."""
    with torch.no_grad():
        step = append_dims(torch.full_like(t, h), z.ndim)
        dudt = (model(z + step * v, r, t + h) - model(z - step * v, r, t - h)) / (2 * h)
        return v - append_dims(t - r, z.ndim) * dudt


def rescaled_to_diffusion(loss: Tensor, is_diffusion: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample losses (B,) with every row off the diagonal (r < t) scaled, without gradient, to
    the mean loss of the r = t rows: ``loss_i mean(diffusion) / (loss_i + eps)`` (AnyFlow's
    ``train_bidirection``); no r = t rows leave the scale NaN there, so the rows stay as they are."""
    if not bool(is_diffusion.any()) or bool(is_diffusion.all()):
        return loss
    with torch.no_grad():
        scale = loss[is_diffusion].mean() / (loss + eps)
    return torch.where(is_diffusion, loss, loss * scale)


def draw_rollout(
    nfes: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[int, int]:
    """``(nfe, k)``: a step count from ``nfes`` and the step ``k`` in [0, nfe) the rollout takes on its
    own (uniform, as AnyFlow's ``random.choice`` and ``random.randrange``). Rank 0's draw holds on
    every rank, as AnyFlow broadcasts it. ``device``: the batch's (where the collective runs)."""
    nfe = int(nfes[agreed_randint(len(nfes), device, generator)])
    return nfe, agreed_randint(nfe, device, generator)


def shortcut_rollout(flow_map: FlowMap, noise: Tensor, grid: Tensor, k: int) -> Tensor:
    """The data an ``(len(grid) - 1)``-step walk reaches from ``noise``, in at most three flow-map
    calls ``flow_map(x, s, s_next)``: ``grid[0] -> grid[k]``, ``grid[k] -> grid[k + 1]``,
    ``grid[k + 1] -> grid[-1]``, a call skipped where its ends coincide (AnyFlow's ``training_rollout``).
    Gradients flow through every call made."""
    x = noise
    for a, b in ((0, k), (k, k + 1), (k + 1, len(grid) - 1)):
        if grid[a] != grid[b]:
            x = flow_map(x, batch_time(grid[a], x), batch_time(grid[b], x))
    return x
