"""LADD: latent adversarial diffusion distillation (Sauer et al. 2024, "Fast High-Resolution Image
Synthesis with Latent Adversarial Diffusion Distillation"; NVlabs/FastGen ``LADDModel``,
fastgen/methods/distribution_matching/ladd.py; docs/methods.md 5.7).

A purely adversarial objective: no distillation target at all. The discriminator is the frozen
teacher, read at several of its layers with one small trainable head per layer, on *noised*
inputs: generated and real images are noised to a random time ``s`` and the teacher runs at ``s``,
so its features carry what the teacher knows about that noise level. The generator (one step from
pure noise, or a few) takes its step on every ``student_update_freq``-th batch and the heads on
the others (FastGen: 1 in 5). Losses are non-saturating. The regulariser is APT's approximate R1:
the squared difference between the heads' logits on the noised real images and on the clean real
images perturbed by ``r1_alpha`` noise, read at the same time (FastGen's inputs, which differ from
APT's D(x) against D(x + alpha eps) on one input); nothing differentiates a gradient, so FSDP shards it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from distill.core.gan import approximate_r1, mean_probability, ns_d_loss, ns_g_loss
from distill.core.prediction import fm_noise
from distill.core.time_sampling import shift_time
from distill.methods.base import Method, SamplingPlan, check_counts
from distill.nets.discriminator import FeatureHeads, data_shape_of
from distill.nets.features import encoder_layers, read_features
from distill.nets.freezing import frozen
from distill.students.generator import (
    check_generator_times,
    clamp_generator_times,
    sampling_times,
    training_sample,
)


class LADD(Method):
    """Args:
    generator_times: the generator's FM times (1-step: [1.0]; FastGen's 4-step Wan: its ``t_list``).
    student_update_freq: the generator steps on batches ``0, k, 2k, ...``, the heads on the rest (FastGen: 5).
    time_min, time_max: the discriminator's noise levels ``s ~ U(time_min, time_max)`` in FM time
        (FastGen ``sample_t_cfg``: uniform between ``min_t`` and ``max_t``), then ``time_shift``.
    time_shift: SD3's shift of those times (1: none; FastGen's Wan config uses a shifted distribution).
    same_time_and_noise: real images noised with the generated images' ``s`` and noise (FastGen
        ``gan_use_same_t_noise``), else with their own.
    r1_weight, r1_alpha: approximate R1 (FastGen ``gan_r1_reg_weight``, ``gan_r1_reg_alpha``; 0 disables).
    feature_layers: teacher layers to read; None: every down block and the middle block.
    head_width: hidden width of vector heads (MLP teachers, token features).
    disc_lr_ratio: the heads' learning rate over the generator's.
    """

    name = "ladd"
    optimizer_names = ("student", "discriminator")
    data_role = "real"

    def __init__(
        self,
        generator_times: Sequence[float] = (1.0,),
        student_update_freq: int = 5,
        time_min: float = 0.001,
        time_max: float = 0.999,
        time_shift: float = 1.0,
        same_time_and_noise: bool = False,
        r1_weight: float = 0.0,
        r1_alpha: float = 0.1,
        feature_layers: Sequence[str] | None = None,
        head_width: int = 128,
        disc_lr_ratio: float = 1.0,
    ):
        super().__init__()
        check_counts(student_update_freq=student_update_freq, head_width=head_width)
        if not 0 <= time_min < time_max <= 1:
            raise ValueError(f"method.objective.time_min={time_min}, time_max={time_max}: need 0 <= min < max <= 1")
        if time_shift <= 0 or r1_weight < 0 or r1_alpha < 0 or disc_lr_ratio <= 0:
            raise ValueError(
                "method.objective.time_shift and disc_lr_ratio must be > 0, r1_weight and r1_alpha >= 0 "
                f"(got {time_shift}, {disc_lr_ratio}, {r1_weight}, {r1_alpha})"
            )
        self.times = check_generator_times(generator_times)
        self.student_update_freq = student_update_freq
        self.time_min, self.time_max, self.time_shift = time_min, time_max, time_shift
        self.same_time_and_noise = same_time_and_noise
        self.r1_weight, self.r1_alpha = r1_weight, r1_alpha
        self.feature_layers = list(feature_layers) if feature_layers else None
        self.head_width, self.disc_lr_ratio = head_width, disc_lr_ratio
        self.heads: nn.Module | None = None

    # --- networks ---------------------------------------------------------------------------
    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.times = clamp_generator_times(self.times, student)
        if self.heads is not None:
            return
        device = next(student.parameters()).device
        x = torch.zeros(2, *data_shape_of(student), device=device)
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.features(x, torch.full((2,), 0.5, device=device), teacher)]
        self.heads = FeatureHeads(shapes, width=self.head_width).to(device)

    def features(self, x_s: Tensor, s: Tensor, teacher: nn.Module) -> list[Tensor]:
        """The frozen teacher's features of the noised images ``x_s`` at time ``s`` (an analytic
        teacher's: ``x_s`` itself)."""
        root = getattr(teacher, "model", teacher)
        layers = (lambda r: self.feature_layers) if self.feature_layers else encoder_layers
        return read_features(root, layers, x_s, s)

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        if optimizer == "discriminator":
            return self.heads.parameters()
        return super().trainable_parameters(optimizer, student)

    def phases(self, step: int) -> Sequence[str]:
        # FastGen single_train_step: iteration % student_update_freq == 0 updates the student
        return ("student",) if step % self.student_update_freq == 0 else ("discriminator",)

    def lr_scale(self, optimizer: str, step: int) -> float:
        return self.disc_lr_ratio if optimizer == "discriminator" else 1.0

    # --- losses ---------------------------------------------------------------------------
    def gan_times(self, n: int, like: Tensor) -> Tensor:
        """The discriminator's noise levels, (n,)."""
        s = self.time_min + (self.time_max - self.time_min) * torch.rand(n, device=like.device, dtype=like.dtype)
        return shift_time(s, self.time_shift) if self.time_shift != 1.0 else s

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        noise = torch.randn_like(x0)
        if phase == "discriminator":
            return self.discriminator_loss(x0, noise, teacher, student)
        x_hat, _ = training_sample(student, noise, self.times)
        s, eps = self.gan_times(len(x0), x0), torch.randn_like(x0)
        with frozen(self.heads):  # G's step: gradients reach the generator only
            logits = self.heads(self.features(fm_noise(x_hat, eps, s), s, teacher))
        return {"loss": ns_g_loss(logits), "p_fake": mean_probability(logits)}

    def discriminator_loss(
        self, x0: Tensor, noise: Tensor, teacher: nn.Module, student: nn.Module
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            x_hat, _ = training_sample(student, noise, self.times)
            s, eps = self.gan_times(len(x0), x0), torch.randn_like(x0)
            fake = self.features(fm_noise(x_hat, eps, s), s, teacher)
            if not self.same_time_and_noise:
                s, eps = self.gan_times(len(x0), x0), torch.randn_like(x0)
            real = self.features(fm_noise(x0, eps, s), s, teacher)
        real_logits, fake_logits = self.heads(real), self.heads(fake)
        d_loss = ns_d_loss(real_logits, fake_logits)
        terms = {
            "gan_d": d_loss.detach(),
            "p_real": mean_probability(real_logits),
            "p_fake": mean_probability(fake_logits),
        }
        if self.r1_weight > 0:
            with torch.no_grad():  # as FastGen (ladd.py:186-197): the *clean* real images, shaken, read at s
                shaken_features = self.features(x0 + self.r1_alpha * torch.randn_like(x0), s, teacher)
            r1 = approximate_r1(real_logits, self.heads(shaken_features))
            d_loss = d_loss + self.r1_weight * r1
            terms["r1"] = r1.detach()
        return {"loss": d_loss, **terms}

    # --- sampling ---------------------------------------------------------------------------
    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        return SamplingPlan(student, sampling_times(self.times, nfe).tolist(), renoise=True)
