"""SiD (Zhou et al. 2024): score identity distillation of a one-step generator (docs/methods.md 5.6).

Data-free. Every step the fake-score net (a copy of the teacher) first learns the generator's
current distribution with EDM's denoising loss on detached generator samples, then the generator
steps on ``distill.core.sid.sid_generator_loss`` at its samples noised to SiD's noise law, with the
gradient through the teacher and the (frozen) fake-score net into the samples
(mingyuanzhou/SiD training/sid_loss.py, training/sid_training_loop.py).

The generator is the student network read at one fixed noise level: ``G(z) = D(sigma_init z;
sigma_init)`` (SiD: sigma_init = 2.5), in FM time ``s = sigma_init / (1 + sigma_init)`` from the
state ``s z``. More NFE re-noise its sample to lower times, as DMD2's one-step students do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.sid import edm_denoising_loss, lognormal_sigmas, sid_generator_loss, sid_sigmas
from distill.methods.base import Method, SamplingPlan
from distill.nets.freezing import evaluating, frozen
from distill.students.flow_map import fake_score_copy
from distill.students.generator import clamp_generator_times, deterministic_sample, generator_x0, sampling_times


def differentiable_x0(teacher: nn.Module, x_s: Tensor, s: Tensor) -> Tensor:
    """The teacher's data estimate at x_s, with the gradient into x_s: a ``Teacher``'s forward runs
    under no_grad, its ``differentiable`` forward keeps the graph."""
    real = getattr(teacher, "differentiable", teacher)
    return velocity_to_x0(x_s, s, real(x_s, s))


class SiD(Method):
    """Args:
    init_sigma: the generator's fixed EDM noise level (SiD: 2.5): G(z) = D(init_sigma z; init_sigma).
    alpha: SiD's alpha in ``(y_real - y_fake) . ((y_real - y) - alpha (y_real - y_fake))`` (SiD: 1.2).
    tmax: the generator loss's noise levels take t ~ U(0, tmax / 1000) on EDM's Karras ramp (SiD: 800).
    p_mean, p_std, sigma_data: the fake score's EDM training law and loss weight (EDM: -1.2, 1.2, 0.5).
    generator_loss_scale: SiD's generator loss scaling (``--lsg``, 100), kept so that Adam's
        epsilon sees SiD's gradient size.
    name: the sampler name on result rows.
    """

    name = "sid"
    optimizer_names = ("fake_score", "student")
    data_role = "shape"  # data-free: only the batch's size and condition are read

    def __init__(
        self,
        init_sigma: float = 2.5,
        alpha: float = 1.2,
        tmax: int = 800,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_data: float = 0.5,
        generator_loss_scale: float = 100.0,
        name: str = "sid",
    ):
        super().__init__()
        if init_sigma <= 0 or sigma_data <= 0 or p_std <= 0 or generator_loss_scale <= 0:
            raise ConfigError(
                f"method.objective.init_sigma={init_sigma}, sigma_data={sigma_data}, p_std={p_std} and "
                f"generator_loss_scale={generator_loss_scale} must be > 0"
            )
        if not 0 < tmax <= 1000:
            raise ConfigError(f"method.objective.tmax={tmax} must be in (0, 1000]")
        self.name = name
        self.alpha, self.tmax, self.generator_loss_scale = alpha, tmax, generator_loss_scale
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.times = torch.tensor([init_sigma / (1 + init_sigma)], dtype=torch.float64)
        self.fake_score: nn.Module | None = None

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.times = clamp_generator_times(self.times, student)
        if self.fake_score is None:
            self.fake_score = fake_score_copy(teacher, student)

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        if self.fake_score is None and any(k.startswith("fake_score.") for k in state_dict):
            raise RuntimeError("load a SiD checkpoint into a DistillModule (it attaches the fake-score net)")

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        if optimizer == "student":
            return super().trainable_parameters(optimizer, student)
        return (p for p in self.fake_score.parameters() if p.requires_grad)

    def generate(self, student: nn.Module, like: Tensor) -> Tensor:
        """One-step generator samples for a batch like ``like``: ``D(sigma_init z; sigma_init)``."""
        return deterministic_sample(student, torch.randn_like(like), self.times)[0]

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if phase == "fake_score":
            return self.fake_score_loss(x0, student)
        return self.generator_loss(x0, teacher, student)

    def fake_score_loss(self, x0: Tensor, student: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad(), evaluating(student):  # SiD generates the fake score's data without dropout
            y = self.generate(student, x0)
        sigma = lognormal_sigmas(len(y), self.p_mean, self.p_std, y)
        loss = self.fake_score_term(y, sigma, torch.randn_like(y))
        return {"loss": loss, "score": loss.detach()}

    def fake_score_term(self, y: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        """EDM's denoising loss of the fake-score net on generator samples y noised to EDM levels sigma (B,)."""
        s = sigma / (1 + sigma)
        y_fake = generator_x0(self.fake_score, fm_noise(y, eps, s), s)
        return edm_denoising_loss(y_fake, y, sigma, self.sigma_data)

    def generator_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module) -> dict[str, Tensor]:
        y = self.generate(student, x0)
        loss = self.generator_term(y, teacher, sid_sigmas(len(y), self.tmax, y), torch.randn_like(y))
        return {"loss": self.generator_loss_scale * loss, "sid": loss.detach()}

    def generator_term(self, y: Tensor, teacher: nn.Module, sigma: Tensor, eps: Tensor) -> Tensor:
        """SiD's generator loss at generator samples y noised to EDM levels sigma (B,) with eps, its
        gradient through the teacher and the frozen fake-score net into y."""
        s = sigma / (1 + sigma)
        x_s = fm_noise(y, eps, s)
        y_real = differentiable_x0(teacher, x_s, s)
        with frozen(self.fake_score), evaluating(self.fake_score):  # as SiD: no dropout, no weight gradient
            y_fake = velocity_to_x0(x_s, s, self.fake_score(x_s, s))
        return sid_generator_loss(y, y_real, y_fake, self.alpha)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        """The generator's one step from ``s z``; more NFE re-noise its sample to lower times."""
        return SamplingPlan(student, sampling_times(self.times, nfe).tolist(), renoise=True)
