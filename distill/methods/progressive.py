"""Progressive distillation (Salimans & Ho 2022; docs/methods.md section 2).

Each round, an N-step teacher's two DDIM steps become one student DDIM step; the student then
serves as the teacher of the next round, halving N until ``final_steps``. DDIM is the same
update in every parameterization, so the rounds run in the canonical flow-matching coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.grids import make_grid
from distill.core.losses import per_sample_mse
from distill.core.prediction import fm_noise
from distill.core.samplers import ddim_step
from distill.core.tensors import append_dims
from distill.methods.base import Method, SamplingPlan, check_choice
from distill.nets.freezing import frozen_copy

WEIGHTINGS = ("snr_trunc", "snr_plus_one")


def pd_target_x0(z_t: Tensor, z_s: Tensor, s_t: Tensor, s_s: Tensor) -> Tensor:
    """The x0 a single student DDIM step from ``z_t`` must predict to land on ``z_s``.

    ``x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)`` with
    ``alpha = 1 - s``, ``sigma = s`` (docs/methods.md section 2, step 4). Computed in float64.
    """
    ratio = append_dims(s_s.double() / s_t.double(), z_t.ndim)
    alpha_t, alpha_s = (append_dims(1 - v.double(), z_t.ndim) for v in (s_t, s_s))
    return ((z_s.double() - ratio * z_t.double()) / (alpha_s - ratio * alpha_t)).to(z_t.dtype)


def snr_weight(s: Tensor, weighting: str) -> Tensor:
    """Loss weight on x0 error: truncated SNR ``max(SNR, 1)`` or ``SNR + 1`` (= v-MSE)."""
    snr = ((1 - s.double()) / s.double()) ** 2
    weight = snr.clamp(min=1.0) if weighting == "snr_trunc" else snr + 1
    return weight.to(s.dtype)


class ProgressiveDistillation(Method):
    """Halve the teacher's step count ``start_steps -> final_steps``, one round at a time.

    Args:
        start_steps: the base teacher's DDIM step count (a power-of-two multiple of final_steps).
        final_steps: the last student's step count.
        steps_per_round: optimizer steps per halving round; None splits the run's
            ``train.max_steps`` evenly over the rounds.
        grid: time grid family (``distill.core.grids``); round grids are nested halvings.
        weighting: ``snr_trunc`` (paper default) or ``snr_plus_one``.
    """

    name = "progressive"
    guidance_input = True  # the student learns guided teacher velocities alone (methods.md 13)

    def __init__(
        self,
        start_steps: int = 32,
        final_steps: int = 1,
        steps_per_round: int | None = None,
        grid: str = "cosine",
        weighting: str = "snr_trunc",
    ):
        super().__init__()
        rounds = math.log2(start_steps / final_steps)
        if start_steps < 2 * final_steps or not rounds.is_integer():
            raise ConfigError(
                f"method.objective.start_steps={start_steps} must be final_steps={final_steps} times a power of "
                "two >= 2"
            )
        check_choice("weighting", weighting, WEIGHTINGS)
        self.start_steps, self.final_steps = start_steps, final_steps
        self.rounds, self.steps_per_round = int(rounds), steps_per_round
        self.grid, self.weighting = grid, weighting
        # Student of each finished round, keyed by its step count; the newest teaches the next round.
        self.snapshots = nn.ModuleDict()
        self.register_buffer("round", torch.zeros((), dtype=torch.long))

    def set_budget(self, max_steps: int) -> None:
        if self.steps_per_round is None:
            self.steps_per_round = max(1, max_steps // self.rounds)

    @property
    def num_steps(self) -> int | None:
        return None if self.steps_per_round is None else self.rounds * self.steps_per_round

    def student_steps(self, round_index: int | None = None) -> int:
        r = int(self.round) if round_index is None else round_index
        return self.start_steps // 2 ** (min(r, self.rounds - 1) + 1)

    def round_grid(self, student_steps: int) -> Tensor:
        """The teacher grid of a round; the student's grid is every other point of it."""
        return make_grid(self.grid, 2 * student_steps)

    def lr_scale(self, optimizer: str, step: int) -> float:
        # Linear decay to zero inside every round (the paper anneals per round).
        return 1.0 - (step % self.steps_per_round) / self.steps_per_round

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        n = self.student_steps()
        round_teacher = self.snapshots[str(2 * n)] if int(self.round) > 0 else teacher
        grid = self.round_grid(n).to(x0)
        i = torch.randint(0, n, (x0.shape[0],), device=x0.device)
        s_t, s_mid, s_s = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        eps = torch.randn_like(x0)
        z_t = fm_noise(x0, eps, s_t)
        with torch.no_grad():
            z_mid = ddim_step(round_teacher, z_t, s_t, s_mid)
            z_s = ddim_step(round_teacher, z_mid, s_mid, s_s)
            target = pd_target_x0(z_t, z_s, s_t, s_s)
        x0_hat = z_t - append_dims(s_t, x0.ndim) * student(z_t, s_t)
        per_sample = snr_weight(s_t, self.weighting) * per_sample_mse(x0_hat, target)
        return {"loss": per_sample.mean(), "student_steps": torch.tensor(float(n))}

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        if (step + 1) % self.steps_per_round or int(self.round) >= self.rounds:
            return []
        n = self.student_steps()
        self.snapshots[str(n)] = frozen_copy(student)
        self.round += 1
        # A fresh round starts from fresh Adam moments (paper: no optimizer state across rounds).
        return list(self.optimizer_names)

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        for key in state_dict:
            if key.startswith("snapshots."):
                steps = key.split(".")[1]
                if steps not in self.snapshots:
                    self.snapshots[steps] = frozen_copy(student)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return [n for n in nfes if self.final_steps <= n <= self.start_steps]

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        """DDIM with the round's student that was trained for exactly ``nfe`` steps, if any."""
        model = self.snapshots[str(nfe)] if str(nfe) in self.snapshots else student
        return SamplingPlan(model, self.round_grid(nfe)[::2].tolist(), renoise=False)
