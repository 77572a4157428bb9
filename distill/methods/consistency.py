"""Consistency distillation (Song et al. 2023; methods.md section 3.2), in flow-matching coordinates.

The consistency function of a velocity model is its one-jump DDIM estimate
``f(x_s, s) = x_s - s v(x_s, s)``: it satisfies the boundary condition ``f(x, 0) = x`` by
construction, and a student copied from the teacher starts as the teacher's x0 predictor.
Each step pulls ``f_theta(x_{s_{n+1}})`` towards an EMA target evaluated one teacher Heun step
later, at ``s_n``, on the Karras grid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.core.ema import ema_update_
from distill.core.grids import make_grid
from distill.core.losses import per_sample_mse, pseudo_huber
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.samplers import prior_state, sample_flow_map
from distill.core.tensors import append_dims
from distill.methods.base import Method, Renoise, SamplingPlan, check_choice
from distill.students.flow_map import frozen_copy

LOSSES = ("l2", "pseudo_huber")


def consistency_fn(model: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    """``f(x_s, s) = x_s - s v(x_s, s)``; equals x at s = 0 (the boundary condition)."""
    return velocity_to_x0(x, s, model(x, s))


@torch.no_grad()
def heun_step(teacher: nn.Module, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One teacher Heun step from ``s`` to ``s_next`` (both (B,), s_next > 0): CD's ODE step."""
    h = append_dims(s_next - s, x.ndim)
    v = teacher(x, s)
    x_euler = x + h * v
    return x + h * 0.5 * (v + teacher(x_euler, s_next))


class ConsistencyFlowMap(nn.Module):
    """Jump to data with the consistency function; ``sample_flow_map`` re-noises in between."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
        return consistency_fn(self.model, x, s)


def consistency_sampling_times(start: float | Tensor, nfe: int, grid: str = "cosine") -> Tensor:
    """``[start, re-noising times..., 0]``: the interior points of an ``nfe``-step ``grid``."""
    interior = make_grid(grid, nfe)[1:-1]
    start = torch.as_tensor(start, dtype=interior.dtype).reshape(1)
    return torch.cat([start, interior, torch.zeros(1, dtype=interior.dtype)])


@torch.no_grad()
def multistep_consistency_sample(student: nn.Module, noise: Tensor, times: Tensor, renoise: Renoise | None) -> Tensor:
    """Multistep consistency sampling (methods.md 3.6): jump to data, re-noise to the next time, repeat."""
    times = times.to(noise)
    renoise = renoise or (lambda i: torch.randn_like(noise))
    return sample_flow_map(ConsistencyFlowMap(student), prior_state(noise, times[0]), times, renoise_fn=renoise)


class ConsistencyDistillation(Method):
    """Args:
    num_scales: N, points of the Karras grid (CIFAR-10: 18).
    ema_target: mu, decay of the target network theta^- (methods.md: 0.95).
    loss: ``l2`` or ``pseudo_huber`` (c = 0.00054 sqrt(dim), as in iCT).
    sampling_grid: grid whose interior points are the multistep re-noising times.
    """

    name = "consistency"

    def __init__(self, num_scales: int = 18, ema_target: float = 0.95, loss: str = "l2", sampling_grid: str = "cosine"):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        self.grid = make_grid("karras", num_scales)[:-1]  # drop the final 0: pairs live on sigma >= sigma_min
        self.ema_target, self.loss_kind, self.sampling_grid = ema_target, loss, sampling_grid
        self.target: nn.Module | None = None

    def _ensure_target(self, student: nn.Module) -> nn.Module:
        if self.target is None:
            self.target = frozen_copy(student)
        return self.target

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        if any(k.startswith("target.") for k in state_dict):
            self._ensure_target(student)

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        target_net = self._ensure_target(student)
        grid = self.grid.to(x0)
        n = torch.randint(0, len(grid) - 1, (x0.shape[0],), device=x0.device)
        s_hi, s_lo = grid[n], grid[n + 1]
        x_hi = fm_noise(x0, torch.randn_like(x0), s_hi)
        with torch.no_grad():
            target = consistency_fn(target_net, heun_step(teacher, x_hi, s_hi, s_lo), s_lo)
        pred = consistency_fn(student, x_hi, s_hi)
        if self.loss_kind == "l2":
            per_sample = per_sample_mse(pred, target)
        else:
            per_sample = pseudo_huber(pred, target, 0.00054 * x0[0].numel() ** 0.5)
        return {"loss": per_sample.mean()}

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        ema_update_(self._ensure_target(student), student, self.ema_target)
        return []

    def sample_times(self, nfe: int) -> Tensor:
        """Start at the largest trained time, re-noise at the sampling grid's interior points."""
        return consistency_sampling_times(self.grid[0], nfe, self.sampling_grid)

    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        return multistep_consistency_sample(student, noise, self.sample_times(nfe), renoise)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        return SamplingPlan(student, self.sample_times(nfe).tolist(), renoise=True)
