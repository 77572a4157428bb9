"""AnyFlow (Gu et al. 2026; docs/methods.md 10.4): one any-step flow-map student, in two stages of one run.

The student is an average-velocity flow map ``u(z, r, t)`` (MeanFlow's, ``distill.students.average_velocity``):
a jump ``t -> r`` is one call, so one network samples at any number of steps.

- **Stage 1** (flow-map training): the MeanFlow identity on noised data, its time derivative by a
  central difference, with fixed shares of the batch at r = t (flow matching) and r = 0 (one jump
  to data), a per-time loss weight, and the r < t rows rescaled to the size of the r = t rows.
- **Stage 2** (on-policy distribution matching): each batch draws a step count, rolls the student
  out from noise along that many steps' grid (three calls at most, ``distill.core.anyflow.shortcut_rollout``)
  with its gradient, and pushes the result along DMD's score difference (teacher against a
  fake-score copy trained on the rollouts, one update each per batch); the stage-1 loss trains
  alongside, on the same data batch.

The stage switch is a step or a fraction of the run's budget; ``stage2_start: 0`` with
``init_from`` a stage-1 run (AnyFlow's own recipe: two runs, the second from the first's EMA)
gives the second stage alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.core.anyflow import (
    central_difference_target,
    check_shares,
    draw_rollout,
    rescaled_to_diffusion,
    sample_flowmap_times,
    shortcut_rollout,
    time_weight,
    time_weight_table,
)
from distill.core.dmd import dm_gradient, dm_loss, flow_score_loss
from distill.core.errors import ConfigError
from distill.core.grids import make_grid
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.samplers import sample_flow_map
from distill.core.time_sampling import shift_time
from distill.methods.base import FALLBACK_BUDGET, Method, Renoise, attached, check_choice
from distill.students.average_velocity import (
    AverageVelocityFlowMap,
    AverageVelocityModel,
    InstantaneousVelocity,
    average_velocity_from,
)
from distill.students.flow_map import fake_score_copy

VELOCITIES = ("data", "teacher")


class AnyFlow(Method):
    """Args:
    diffusion_ratio, consistency_ratio: shares of each batch with r = t and with r = 0 (AnyFlow: 0.5, 0.25).
    time_shift: SD3 shift of the stage-1 times (AnyFlow's Wan 480p: 5).
    time_weight: per-time loss weight: ``beta08`` (AnyFlow: ``t (1 - t)^0.5``), ``gaussian`` or ``uniform``.
    fd_step: h of the central difference in FM time (AnyFlow: 5 of 1000 timesteps, 5e-3).
    velocity: ``data`` (eps - x0, AnyFlow) or ``teacher`` (the teacher's velocity at z_t).
    rescale: scale the r < t rows' losses to the mean r = t row loss (AnyFlow: always).
    stage2_start: the first step of stage 2: a step count (>= 1), a fraction of the budget (below 1),
        or 0 (stage 2 only: start the student with ``init_from`` a stage-1 run).
    rollout_nfes: step counts a stage-2 rollout draws from (AnyFlow: 2, 4, 8, 16, 50).
    dmd_weight: weight of the DM loss (AnyFlow: 1; its loss is the full MSE, DMD2's halved one doubled).
    flowmap_weight: weight of the co-trained stage-1 loss in stage 2 (AnyFlow: 1; 0 drops it).
    dmd_shift: SD3 shift of the DM and fake-score noise levels (AnyFlow: 5).
    min_time, max_time: clamp of those noise levels (AnyFlow: 0 and 1).
    fake_p_mean, fake_p_std: logit-normal law of the fake score's training times (AnyFlow: 0, 1).
    stage2_lr_scale: both optimizers' lr in stage 2 / the student's base lr (AnyFlow: 2e-6 / 5e-5).
    fake_lr_ratio: the fake score's lr / the student's in stage 2 (AnyFlow: 1).
    sampling_shift: SD3 shift of the sampling grid ``linspace(1, 0, n + 1)``, which stage-2 rollouts walk
        too (AnyFlow's Wan scheduler: 5; 1 keeps it uniform).
    nfe_shifts: the sampling grid's shift at chosen step counts, ``{nfe: shift}``, in place of
        ``sampling_shift`` when sampling only (rollouts keep ``sampling_shift``): one any-step student,
        each step count on the grid that suits it (none by default; chosen on data, see the config).
    time_scale: k of the student's time inputs (``AverageVelocityModel``; 1000 for a teacher copy).
    """

    name = "anyflow"
    optimizer_names = ("student", "fake_score")
    fresh_parameters = ("*extra_embed.*", "*class_embedding.*")  # the second time input

    def __init__(
        self,
        diffusion_ratio: float = 0.5,
        consistency_ratio: float = 0.25,
        time_shift: float = 1.0,
        time_weight: str = "beta08",
        fd_step: float = 5e-3,
        velocity: str = "data",
        rescale: bool = True,
        stage2_start: float = 0.75,
        rollout_nfes: Sequence[int] = (2, 4, 8, 16, 50),
        dmd_weight: float = 1.0,
        flowmap_weight: float = 1.0,
        dmd_shift: float = 1.0,
        min_time: float = 0.0,
        max_time: float = 1.0,
        fake_p_mean: float = 0.0,
        fake_p_std: float = 1.0,
        stage2_lr_scale: float = 1.0,
        fake_lr_ratio: float = 1.0,
        sampling_shift: float = 1.0,
        nfe_shifts: Mapping[int, float] | None = None,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        check_choice("velocity", velocity, VELOCITIES)
        check_shares(diffusion_ratio, consistency_ratio)
        nfe_shifts = {int(n): float(shift) for n, shift in (nfe_shifts or {}).items()}
        shifts = [("time_shift", time_shift), ("dmd_shift", dmd_shift), ("sampling_shift", sampling_shift)]
        shifts += [(f"nfe_shifts[{n}]", shift) for n, shift in nfe_shifts.items()]
        for option, value in shifts:
            if value <= 0:
                raise ConfigError(f"method.objective.{option}={value} must be > 0 (1 keeps the times)")
        if fd_step <= 0:
            raise ConfigError(f"method.objective.fd_step={fd_step} must be > 0 (AnyFlow: 5e-3)")
        if stage2_start < 0:
            raise ConfigError(
                f"method.objective.stage2_start={stage2_start} must be >= 0 (a step, a fraction of the budget "
                "below 1, or 0 for stage 2 only)"
            )
        if not rollout_nfes or min(rollout_nfes) < 1:
            raise ConfigError(f"method.objective.rollout_nfes={list(rollout_nfes)} must be step counts >= 1")
        if not 0 <= min_time < max_time <= 1:
            raise ConfigError(f"method.objective.min_time={min_time}, max_time={max_time}: need 0 <= min < max <= 1")
        self.grid, self.weights = time_weight_table(time_weight, time_shift)  # refuses an unknown weight
        self.diffusion_ratio, self.consistency_ratio, self.time_shift = diffusion_ratio, consistency_ratio, time_shift
        self.fd_step, self.velocity, self.rescale = fd_step, velocity, rescale
        self.data_role = "real" if velocity == "data" else "marginal"
        self.stage2_start = stage2_start
        self.switch_step = int(stage2_start) if stage2_start >= 1 or stage2_start == 0 else None  # else set_budget
        self.rollout_nfes = [int(n) for n in rollout_nfes]
        self.dmd_weight, self.flowmap_weight, self.dmd_shift = dmd_weight, flowmap_weight, dmd_shift
        self.min_time, self.max_time, self.fake_p_mean, self.fake_p_std = min_time, max_time, fake_p_mean, fake_p_std
        self.stage2_lr_scale, self.fake_lr_ratio = stage2_lr_scale, fake_lr_ratio
        self.sampling_shift, self.nfe_shifts, self.time_scale = sampling_shift, nfe_shifts, time_scale
        self.fake_score: nn.Module | None = None

    # --- networks and schedule ---------------------------------------------------------------
    def prepare_student(self, student: nn.Module) -> nn.Module:
        """The student as ``u(z, r, t)``; an already converted one (checkpoint reload) is kept."""
        return average_velocity_from(student, self.time_scale)

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.fake_score is None:
            fake = fake_score_copy(teacher, student)  # a copy of the student where the teacher has no network
            self.fake_score = InstantaneousVelocity(fake) if isinstance(fake, AverageVelocityModel) else fake

    def trainable_parameters(self, optimizer: str, student: nn.Module):
        if optimizer == "student":
            return super().trainable_parameters(optimizer, student)
        return (p for p in attached(self.fake_score, "the fake score").parameters() if p.requires_grad)

    def set_budget(self, max_steps: int) -> None:
        if self.switch_step is None:
            self.switch_step = round(self.stage2_start * max_steps)

    def stage(self, step: int) -> int:
        """1 (flow-map training) before the switch step, 2 (on-policy DMD) from it."""
        switch = self.switch_step if self.switch_step is not None else round(self.stage2_start * FALLBACK_BUDGET)
        return 1 if step < switch else 2

    def phases(self, step: int) -> Sequence[str]:
        return ("student",) if self.stage(step) == 1 else ("student", "fake_score")  # AnyFlow: generator first

    def lr_scale(self, optimizer: str, step: int) -> float:
        if self.stage(step) == 1:
            return 1.0
        return self.stage2_lr_scale * (self.fake_lr_ratio if optimizer == "fake_score" else 1.0)

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        """Stage 2 starts the student's optimizer afresh, as AnyFlow's second run does."""
        return ["student"] if self.stage(step) == 1 and self.stage(step + 1) == 2 else []

    # --- losses --------------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if not isinstance(student, AverageVelocityModel):
            raise TypeError("AnyFlow trains an AverageVelocityModel: pass the student through prepare_student")
        if phase == "fake_score":
            nfe, k = draw_rollout(self.rollout_nfes, device=x0.device)
            score = self.fake_score_loss(x0, student, nfe, k)
            return {"loss": score, "score": score.detach()}
        if self.stage(step) == 1:
            flowmap, mse = self.flowmap_loss(x0, teacher, student)
            return {"loss": flowmap, "flowmap": flowmap.detach(), "mse": mse}
        nfe, k = draw_rollout(self.rollout_nfes, device=x0.device)
        dm = self.dm_loss(x0, teacher, student, nfe, k)  # AnyFlow's order: the DM term, then the flow-map loss
        flowmap, mse = self.flowmap_loss(x0, teacher, student)
        total = self.dmd_weight * dm + self.flowmap_weight * flowmap
        terms = {"dm": dm.detach(), "flowmap": flowmap.detach(), "mse": mse, "nfe": torch.tensor(float(nfe))}
        return {"loss": total, **terms}

    def flowmap_loss(self, x0: Tensor, teacher: nn.Module, student: AverageVelocityModel) -> tuple[Tensor, Tensor]:
        """Stage 1's loss on the data batch x0, and its unweighted per-element MSE (for the logs)."""
        eps = torch.randn_like(x0)
        r, t, is_diffusion = sample_flowmap_times(
            x0.shape[0], self.diffusion_ratio, self.consistency_ratio, self.time_shift, x0.device, x0.dtype
        )
        z = fm_noise(x0, eps, t)
        if self.velocity == "data":
            v = eps - x0
        else:
            with torch.no_grad():
                v = teacher(z, t)
        target = central_difference_target(student, z, r, t, v, self.fd_step)
        err = (student(z, r, t) - target).pow(2).flatten(1).mean(dim=1)
        per_sample = err * time_weight(t, self.grid, self.weights)
        if self.rescale:
            per_sample = rescaled_to_diffusion(per_sample, is_diffusion)
        return per_sample.mean(), err.detach().mean()

    def rollout(self, student: AverageVelocityModel, noise: Tensor, nfe: int, k: int) -> Tensor:
        """The student's ``nfe``-step sample from ``noise`` by ``shortcut_rollout`` (gradient through it)."""
        grid = shift_time(make_grid("uniform", nfe), self.sampling_shift)  # nfe_shifts are for sampling only
        return shortcut_rollout(AverageVelocityFlowMap(student), noise, grid.to(noise), k)

    def _noise_levels(self, t: Tensor) -> Tensor:
        """DM and fake-score noise levels from draws t (B,) (drawn in the default dtype, as AnyFlow's)."""
        return shift_time(t, self.dmd_shift).clamp(self.min_time, self.max_time)

    def dm_loss(self, x0: Tensor, teacher: nn.Module, student: AverageVelocityModel, nfe: int, k: int) -> Tensor:
        """DMD's loss on the student's rollout from fresh noise: ``mse(x, sg(x - grad))``, the gradient
        being the teacher-vs-fake-score difference at one noised copy of x (``distill.core.dmd``)."""
        x_hat = self.rollout(student, torch.randn_like(x0), nfe, k)
        fake = attached(self.fake_score, "the fake score")
        with torch.no_grad():
            s = self._noise_levels(torch.rand(x0.shape[0], device=x0.device).to(x0.dtype))
            x_s = fm_noise(x_hat.detach(), torch.randn_like(x_hat), s)
            mu_real = velocity_to_x0(x_s, s, teacher(x_s, s))
            mu_fake = velocity_to_x0(x_s, s, fake(x_s, s))
            grad = dm_gradient(x_hat.detach(), mu_real, mu_fake)
        return 2 * dm_loss(x_hat, grad)  # AnyFlow's full MSE (DMD2's 0.5 MSE doubled)

    def fake_score_loss(self, x0: Tensor, student: AverageVelocityModel, nfe: int, k: int) -> Tensor:
        """The fake score's flow-matching loss on a detached rollout, at logit-normal noise levels."""
        with torch.no_grad():
            x_hat = self.rollout(student, torch.randn_like(x0), nfe, k)
        eps = torch.randn_like(x_hat)
        normal = torch.randn(x0.shape[0], device=x0.device).to(x0.dtype)
        s = self._noise_levels(torch.sigmoid(self.fake_p_mean + self.fake_p_std * normal))
        fake = attached(self.fake_score, "the fake score")
        return flow_score_loss(fake(fm_noise(x_hat, eps, s), s), x_hat, eps)

    # --- sampling --------------------------------------------------------------------------------
    def sample_times(self, nfe: int) -> Tensor:
        """The jump times: ``nfe + 1`` points of the uniform grid, from 1 down to 0, shifted by
        ``nfe_shifts[nfe]`` where set, else ``sampling_shift``."""
        return shift_time(make_grid("uniform", nfe), self.nfe_shifts.get(nfe, self.sampling_shift))

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return [n for n in nfes if n >= 1]

    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """Deterministic jumps ``z_r = z_t - (t - r) u(z_t, r, t)`` along the grid (``renoise`` unused)."""
        return sample_flow_map(AverageVelocityFlowMap(student), noise, self.sample_times(nfe).to(noise))
