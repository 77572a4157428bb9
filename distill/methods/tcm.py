"""Truncated consistency training (TCM, Lee et al. 2025): stage 2 of a consistency-training run.

A stage-1 consistency model (an ECT run, given as ``init_from``) already maps every noise level to
data. TCM keeps a frozen copy of it and trains the student only on EDM sigmas ``t >= transition``,
drawn from a truncated log-Student-t law. Its targets come from the two-stage model
(``distill.students.two_stage``): the frozen stage-1 model where ``r < transition``, the student under
stop-gradient above. A share of each batch sits at the transition itself; its loss, the boundary
loss, ties the student to the stage-1 model there and is weighted apart (docs/methods.md 3.7).

The pair ``(t, r)`` and the loss are ECT's (``distill.methods.consistency_training``) with the gap at
FastGen's final ratio. Defaults: FastGen ``fastgen/configs/methods/config_tcm.py``; the step is
``TCMModel.single_train_step`` in ``fastgen/methods/consistency_model/TCM.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.time_sampling import sample_truncated_log_t
from distill.methods.base import attached
from distill.methods.consistency_training import (
    SIGMA_MAX,
    SIGMA_MIN,
    ConsistencyTraining,
    pair_distance,
    sigma_to_fm_time,
    sigmoid_gap_r,
)
from distill.nets.freezing import frozen_copy
from distill.students.two_stage import two_stage

BOUNDARY_OFFSET = 1e-8  # FastGen puts the boundary rows at transition_t + 1e-8: just inside the student's range


def boundary_rows(batch: int, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """FastGen's boundary mask (B,): exactly ``floor(batch * prob)`` rows at random, or, where that
    is 0, each row with probability ``prob``."""
    count = int(batch * prob)
    if count == 0:
        return torch.rand(batch, generator=generator) < prob
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[torch.randperm(batch, generator=generator)[:count]] = True
    return mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 where the mask is empty (FastGen: NaN, at batches under 4)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


class TruncatedConsistency(ConsistencyTraining):
    """Args:
    transition: EDM sigma where the student takes over from the frozen stage-1 model (FastGen
        ``transition_t``: 1.0); also the lower end of the training range.
    p_mean, p_std, df: location, scale and degrees of freedom of the log-Student-t law of ``t``
        (FastGen: 0.0, 0.2, 0.01), truncated to ``[transition, 80]``.
    ratio: ``r = t (1 - (1 - ratio)(1 + k sigmoid(-b t)))``; FastGen's CT schedule continues from the
        stage-1 run, whose ratio has reached its limit 0.999 (``ct_schedule.ratio_limit``).
    k, b: the sigmoid adjustment of the gap (ECT, FastGen: 8, 1).
    boundary_prob: share of each batch placed at the transition (FastGen: 0.25).
    boundary_weight: weight of their loss (FastGen ``w_boundary``: 0.1).
    huber_c, weighting, sigma_data, sampling_grid, sampling_sigmas, student_precond: as for ECT
        (``ConsistencyTraining``).
    """

    name = "tcm"

    def __init__(
        self,
        transition: float = 1.0,
        p_mean: float = 0.0,
        p_std: float = 0.2,
        df: float = 0.01,
        ratio: float = 0.999,
        k: float = 8.0,
        b: float = 1.0,
        boundary_prob: float = 0.25,
        boundary_weight: float = 0.1,
        huber_c: float = 0.0,
        weighting: str = "inverse_gap",
        sigma_data: float = 0.5,
        sampling_grid: str = "cosine",
        sampling_sigmas: Sequence[float] | None = None,
        student_precond: str = "keep",
        name: str = "tcm",
    ):
        super().__init__(
            schedule="ect",
            p_mean=p_mean,
            p_std=p_std,
            k=k,
            b=b,
            num_stages=1,
            huber_c=huber_c,
            weighting=weighting,
            sigma_data=sigma_data,
            sampling_grid=sampling_grid,
            name=name,
            sampling_sigmas=sampling_sigmas,
            student_precond=student_precond,
        )
        checks = {
            "transition": (transition, SIGMA_MIN < transition < SIGMA_MAX, f"lie in ({SIGMA_MIN}, {SIGMA_MAX})"),
            "ratio": (ratio, 0 < ratio < 1, "lie in (0, 1)"),
            "boundary_prob": (boundary_prob, 0 <= boundary_prob < 1, "lie in [0, 1)"),
            "p_std": (p_std, p_std > 0, "be > 0"),
            "df": (df, df > 0, "be > 0"),
        }
        for key, (value, ok, rule) in checks.items():
            if not ok:
                raise ConfigError(f"method.objective.{key}={value} must {rule}")
        self.transition, self.df, self.ratio = transition, df, ratio
        self.boundary_prob, self.boundary_weight = boundary_prob, boundary_weight
        self.stage1: nn.Module | None = None

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.stage1 is None:
            # FastGen leaves its copy in train mode: it drops out as the student does, with the same masks.
            self.stage1 = frozen_copy(student).train(student.training)

    def draw_times(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, r, boundary)``: sigmas (B,) with ``t >= transition > r`` on the boundary rows."""
        t = sample_truncated_log_t(batch, self.transition, SIGMA_MAX, self.p_mean, self.p_std, self.df)
        boundary = boundary_rows(batch, self.boundary_prob)
        t = torch.where(boundary, torch.tensor(self.transition + BOUNDARY_OFFSET, dtype=t.dtype), t)
        r = sigmoid_gap_r(t, 1 - self.ratio, self.k, self.b)
        return t.to(device), r.to(device), boundary.to(device)

    def sigma_pairs(self, batch: int, step: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t, r, _ = self.draw_times(batch, device)
        return t, r

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        t, r, boundary = self.draw_times(x0.shape[0], x0.device)
        stage1 = attached(self.stage1, "TCM's frozen stage-1 model")
        transition = float(sigma_to_fm_time(torch.tensor(self.transition, dtype=torch.float64)))
        target_net = two_stage(stage1, student, transition)
        distance = pair_distance(x0, t, r, student, target_net, self.huber_c)
        weighted = self.weight(t, r).to(distance) * distance
        consistency, at_boundary = masked_mean(weighted, ~boundary), masked_mean(weighted, boundary)
        return {
            "loss": consistency + self.boundary_weight * at_boundary,
            "consistency": consistency.detach(),
            "boundary": at_boundary.detach(),
            "distance": masked_mean(distance, ~boundary).detach(),
        }
