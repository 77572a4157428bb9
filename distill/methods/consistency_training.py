"""Consistency training without a teacher: iCT's discrete curriculum and ECT's continuous one.

CT (docs/methods.md 3.3-3.5) replaces CD's teacher ODE step by the same-noise pair: ``x_t`` and
``x_r`` share one eps, and the target is the student's own (stop-gradient) consistency function
at the smaller time. The two schedules differ only in how ``(t, r)`` pairs are drawn and weighted:

- ``ict`` (Song & Dhariwal 2023): Karras grid whose size doubles on a fixed curriculum, index
  drawn from a discretised lognormal, weight ``1 / (sigma_{n+1} - sigma_n)``, pseudo-Huber.
- ``ect`` (Geng et al. 2024): ``t`` lognormal, ``r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t)))``
  with ``stage`` growing during training, so ``t - r`` shrinks geometrically; the student is
  initialised from the diffusion teacher (the ``t -> r`` limit), which is what makes it cheap.

Times are EDM sigmas in this module (that is how both papers state them) and are mapped to FM
time ``s = sigma / (1 + sigma)`` on the way in; the same eps makes the pair exact in either frame.
The teacher is never called: ``loss`` ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.grids import karras_grid
from distill.core.losses import pseudo_huber
from distill.core.precision import full_precision
from distill.core.prediction import VelocityFn, consistency_fn, fm_noise
from distill.core.rng import capture_rng, restore_rng
from distill.core.samplers import consistency_sampling_times
from distill.core.tensors import append_dims
from distill.methods.base import Method, SamplingPlan, check_choice, check_sampling_sigmas
from distill.nets.ecm_precond import ecm_wrap

SCHEDULES = ("ict", "ect")
WEIGHTINGS = ("inverse_gap", "snr_plus_k")
PRECONDS = ("keep", "edm")
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` (grid points)."""
    k_prime = max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def karras_sigmas(num_points: int) -> Tensor:
    """The ``num_points`` Karras sigmas in increasing order, sigma_min to sigma_max."""
    sigma = karras_grid(num_points, SIGMA_MIN, SIGMA_MAX)[:-1]  # FM times, decreasing, 0 dropped
    return (sigma / (1 - sigma)).flip(0)


def lognormal_index_probs(sigmas: Tensor, p_mean: float, p_std: float) -> Tensor:
    """iCT's discretised lognormal over the intervals ``[sigma_n, sigma_{n+1}]`` (sums to 1)."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    probs = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return probs / probs.sum()


def sigmoid_gap_r(t: Tensor, gap: float, k: float = 8.0, b: float = 1.0) -> Tensor:
    """``r = t (1 - gap (1 + k sigmoid(-b t)))``: a relative gap ``gap``, larger at small t; r >= 0."""
    return (t * (1 - gap * (1 + k * torch.sigmoid(-b * t)))).clamp_min(0)


def ect_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's ``r(t)``: a gap shrinking by q each stage, relatively larger at small t; r >= 0."""
    return sigmoid_gap_r(t, q ** -(stage + 1), k, b)


def sigma_to_fm_time(sigma: Tensor) -> Tensor:
    return sigma / (1 + sigma)


def pair_distance(
    x0: Tensor, t: Tensor, r: Tensor, student: nn.Module, target_net: VelocityFn, huber_c: float
) -> Tensor:
    """Per-sample pseudo-Huber distance (B,) between the student's consistency function at sigma ``t``
    and ``target_net``'s, under stop-gradient, at sigma ``r`` on the same noising path (one eps).

    ``target_net`` is the student itself for iCT and ECT, a two-stage model for TCM. It runs from the
    prediction's RNG state, so dropout draws the same masks in both branches (ECT, FastGen's CM).
    """
    s_t, s_r = sigma_to_fm_time(t).to(x0.dtype), sigma_to_fm_time(r).to(x0.dtype)
    eps = torch.randn_like(x0)
    rng = capture_rng(x0.device)
    pred = consistency_fn(student, fm_noise(x0, eps, s_t), s_t)
    with torch.no_grad(), full_precision():  # the target in fp32 under bf16-mixed
        restore_rng(rng, x0.device)
        target = consistency_fn(target_net, fm_noise(x0, eps, s_r), s_r)
        # ECT's mask (locuslab/ect training/loss.py:70-79): at r = 0 the target is the data itself.
        target = torch.where(append_dims(r > 0, x0.ndim), target.nan_to_num(), x0)
    return pseudo_huber(pred, target, huber_c * x0[0].numel() ** 0.5)


class ConsistencyTraining(Method):
    """Args:
    schedule: ``ict`` (discrete curriculum) or ``ect`` (continuous, shrinking ``t - r``).
    p_mean, p_std: lognormal proposal of sigma (both papers: -1.1, 2.0).
    s0, s1: iCT's initial and final number of grid intervals.
    q, k, b: ECT's gap decay per stage and its sigmoid adjustment.
    num_stages: stages that split the training budget evenly (``max_steps``); null with
        ``images_per_stage``.
    images_per_stage: ECT's own schedule instead: a new stage every this many training images
        (``run_ecm.sh``: ``--double=250`` ticks of ``--tick=12.8`` kimg = 3.2 Mimg, 25k iterations at
        batch 128), with no last stage; needs ``num_stages: null``.
    huber_c: pseudo-Huber c in units of ``sqrt(dim)`` (iCT: 0.00054; 0 gives ECT's plain L2 norm).
    weighting: ``inverse_gap`` ``1 / (t - r)`` (iCT, ECT's CIFAR code) or ``snr_plus_k``
        ``1 / t^2 + 1 / sigma_data^2`` (ECT's EDM2 code).
    sampling_grid: grid whose interior points are the multistep re-noising times.
    sampling_sigmas: explicit decreasing re-noising EDM sigmas, the first nfe - 1 for an nfe-step
        sample (ECT ``ct_train.py --mid_t``: [0.821]); null: ``sampling_grid``.
    student_precond: ``keep`` the student's preconditioning, or ``edm``: run an EDM network's
        inner UNet under EDM's scalings with c_noise = ln(sigma) / 4, as ECT's ``ECMPrecond`` does
        with the VP pickle (``distill.nets.ecm_precond``).
    """

    name = "ct"
    data_role = "real"  # no teacher: the data itself is what it learns

    def __init__(
        self,
        schedule: str = "ect",
        p_mean: float = -1.1,
        p_std: float = 2.0,
        s0: int = 10,
        s1: int = 1280,
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        num_stages: int | None = 8,
        huber_c: float = 0.00054,
        weighting: str = "inverse_gap",
        sigma_data: float = 0.5,
        sampling_grid: str = "cosine",
        name: str | None = None,
        images_per_stage: int | None = None,
        sampling_sigmas: Sequence[float] | None = None,
        student_precond: str = "keep",
    ):
        super().__init__()
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("student_precond", student_precond, PRECONDS)
        if (num_stages is None) == (images_per_stage is None):
            raise ConfigError(
                f"method.objective.num_stages={num_stages} and images_per_stage={images_per_stage}: set "
                "exactly one (num_stages spreads the stages over max_steps, images_per_stage is ECT's "
                "stage length in training images); null the other"
            )
        if (num_stages is not None and num_stages < 1) or (images_per_stage is not None and images_per_stage < 1):
            raise ConfigError(
                f"method.objective.num_stages={num_stages} / images_per_stage={images_per_stage} must be >= 1"
            )
        self.images_per_stage, self.student_precond = images_per_stage, student_precond
        self.sampling_sigmas = check_sampling_sigmas(sampling_sigmas)
        self.global_batch: int | None = None
        self.schedule, self.weighting = schedule, weighting
        self.p_mean, self.p_std, self.s0, self.s1 = p_mean, p_std, s0, s1
        self.q, self.k, self.b, self.num_stages = q, k, b, num_stages
        self.huber_c, self.sigma_data, self.sampling_grid = huber_c, sigma_data, sampling_grid
        self.name = name or schedule
        self.total_steps = 1

    def set_budget(self, max_steps: int) -> None:
        self.total_steps = max(1, max_steps)

    def set_batch(self, global_batch: int) -> None:
        self.global_batch = global_batch

    def prepare_student(self, student: nn.Module) -> nn.Module:
        return ecm_wrap(student, self.sigma_data) if self.student_precond == "edm" else student

    def stage(self, step: int) -> int:
        if self.images_per_stage is None:
            return min(self.num_stages - 1, step * self.num_stages // self.total_steps)
        if self.global_batch is None:
            raise RuntimeError(
                "method.objective.images_per_stage needs the run's global batch (set_batch), which the "
                "trainer gives the method before training"
            )
        return step * self.global_batch // self.images_per_stage

    def sigma_pairs(self, batch: int, step: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(t, r)`` sigmas of shape (B,), ``t > r >= 0``, for this step of the curriculum."""
        if self.schedule == "ict":
            sigmas = karras_sigmas(ict_num_scales(step, self.total_steps, self.s0, self.s1))
            n = torch.multinomial(lognormal_index_probs(sigmas, self.p_mean, self.p_std), batch, replacement=True)
            return sigmas[n + 1].to(device), sigmas[n].to(device)
        t = (torch.randn(batch, dtype=torch.float64) * self.p_std + self.p_mean).exp().clamp(SIGMA_MIN, SIGMA_MAX)
        return t.to(device), ect_r(t, self.stage(step), self.q, self.k, self.b).to(device)

    def weight(self, t: Tensor, r: Tensor) -> Tensor:
        if self.weighting == "inverse_gap":
            return 1 / (t - r)
        return 1 / t**2 + 1 / self.sigma_data**2

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        t, r = self.sigma_pairs(x0.shape[0], step, x0.device)
        distance = pair_distance(x0, t, r, student, student, self.huber_c)
        weight = self.weight(t, r).to(distance)
        return {"loss": (weight * distance).mean(), "distance": distance.mean().detach(), "gap": (t - r).mean().float()}

    def sample_times(self, nfe: int) -> Tensor:
        start = sigma_to_fm_time(torch.tensor(SIGMA_MAX))
        return consistency_sampling_times(start, nfe, self.sampling_grid, self.sampling_sigmas)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        return SamplingPlan(student, self.sample_times(nfe).tolist(), renoise=True)
