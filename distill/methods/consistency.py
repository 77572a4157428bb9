"""Consistency distillation (Song et al. 2023; docs/methods.md section 3.2), in flow-matching coordinates.

The consistency function of a velocity model is its one-jump DDIM estimate
``f(x_s, s) = x_s - s v(x_s, s)``: it satisfies the boundary condition ``f(x, 0) = x`` by
construction, and a student copied from the teacher starts as the teacher's x0 predictor.
Each step pulls ``f_theta(x_{s_{n+1}})`` towards an EMA target evaluated one teacher Heun step
later, at ``s_n``, on the Karras grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.ema import ema_update_
from distill.core.errors import ConfigError
from distill.core.grids import make_grid
from distill.core.losses import per_sample_mse, pseudo_huber
from distill.core.precision import full_precision
from distill.core.prediction import consistency_fn, fm_noise
from distill.core.rng import capture_rng, restore_rng
from distill.core.samplers import consistency_sampling_times, edm_heun_step, heun_step
from distill.methods.base import Method, SamplingPlan, attached, check_choice, check_sampling_sigmas
from distill.nets.freezing import frozen_copy
from distill.nets.lpips import PerceptualDistance

LOSSES = ("l2", "pseudo_huber", "lpips")


SOLVERS = {"heun": heun_step, "edm_heun": edm_heun_step}


class ConsistencyDistillation(Method):
    """Args:
    num_scales: N, points of the Karras grid (CIFAR-10: 18).
    ema_target: mu, decay of the target network theta^- (CM's ImageNet-64/LSUN: 0.95). 0 is CM's
        CIFAR-10 recipe: theta^- = stopgrad(theta), the online student itself under no_grad with
        the same dropout masks as the prediction (no copy is kept).
    loss: ``l2``, ``pseudo_huber`` (c = 0.00054 sqrt(dim), as in iCT) or ``lpips`` (CM's; RGB images).
    lpips: with ``loss: lpips``, ``{backbone, linear, resize}``: local weight files of
        ``distill.nets.lpips.LPIPS`` (nothing is downloaded).
    solver: the teacher's step, ``heun`` (Heun in FM coordinates) or ``edm_heun`` (CM's Heun in
        EDM coordinates, ``edm_heun_step``).
    sampling_grid: grid whose interior points are the multistep re-noising times.
    sampling_sigmas: explicit decreasing re-noising EDM sigmas; an nfe-step sample uses the first
        nfe - 1 of them (where there are that many, else ``sampling_grid``). CM CIFAR-10's 2-step
        point is the Karras grid's index 11 of 18, sigma 0.5853.
    """

    name = "consistency"
    guidance_input = True  # the student learns guided teacher velocities alone (methods.md 13)

    def __init__(
        self,
        num_scales: int = 18,
        ema_target: float = 0.95,
        loss: str = "l2",
        solver: str = "heun",
        sampling_grid: str = "cosine",
        sampling_sigmas: Sequence[float] | None = None,
        lpips: dict | None = None,
    ):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        self.lpips = PerceptualDistance(lpips) if loss == "lpips" else None
        check_choice("solver", solver, SOLVERS)
        if not 0.0 <= ema_target < 1.0:
            raise ConfigError(
                f"method.objective.ema_target={ema_target} must lie in [0, 1) (0: the online student, stop-grad)"
            )
        self.sampling_sigmas = check_sampling_sigmas(sampling_sigmas)
        self.grid = make_grid("karras", num_scales)[:-1]  # drop the final 0: pairs live on sigma >= sigma_min
        self.ema_target, self.loss_kind, self.sampling_grid = ema_target, loss, sampling_grid
        self.solver = SOLVERS[solver]
        self.target: nn.Module | None = None

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.ema_target > 0 and self.target is None:  # ema_target 0: the online student, nothing to copy
            self.target = frozen_copy(student)

    def _target_net(self, student: nn.Module) -> nn.Module:
        return student if self.ema_target == 0 else attached(self.target, "CD's EMA target")

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        target_net = self._target_net(student)
        grid = self.grid.to(x0)
        n = torch.randint(0, len(grid) - 1, (x0.shape[0],), device=x0.device)
        s_hi, s_lo = grid[n], grid[n + 1]
        x_hi = fm_noise(x0, torch.randn_like(x0), s_hi)
        rng = capture_rng(x0.device)
        pred = consistency_fn(student, x_hi, s_hi)
        with torch.no_grad(), full_precision():  # the target in fp32 under bf16-mixed
            x_lo = self.solver(teacher, x_hi, s_hi, s_lo)
            restore_rng(rng, x0.device)  # an online target drops out as the prediction did (CM's dropout_rng)
            target = consistency_fn(target_net, x_lo, s_lo)
        if self.loss_kind == "l2":
            per_sample = per_sample_mse(pred, target)
        elif self.lpips is not None:
            per_sample = self.lpips(pred, target)
        else:
            per_sample = pseudo_huber(pred, target, 0.00054 * x0[0].numel() ** 0.5)
        return {"loss": per_sample.mean()}

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        if self.ema_target > 0:
            ema_update_(self._target_net(student), student, self.ema_target)
        return []

    def sample_times(self, nfe: int) -> Tensor:
        """Start at the largest trained time, re-noise at ``sampling_sigmas`` or the grid's interior points."""
        return consistency_sampling_times(self.grid[0], nfe, self.sampling_grid, self.sampling_sigmas)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        return SamplingPlan(student, self.sample_times(nfe).tolist(), renoise=True)
