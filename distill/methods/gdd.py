"""GDD and GDD-I (Zheng & Yang 2024, "Diffusion Models Are Innate One-Step Generators"; docs/methods.md 7).

The teacher is only the initialisation: a one-step generator ``G(z) = z - v(z, 1)`` (the teacher's
data estimate at pure noise) is trained with a GAN loss against *real data* and nothing else: no
teacher targets, so the student is free to leave the teacher's local minimum and beat it.

GDD-I freezes most of the generator (``frozen_layers``, by default GDD's own name rule: the
convolutions and projections of its blocks) and trains what is left: norms, embeddings,
attention. The share that trains is logged as ``student/trainable_fraction``.

The discriminator is projected-GAN style: frozen pretrained features at several scales, one small
trainable head per scale. By default the features are the frozen teacher's own encoder (its down
blocks and middle block, read at FM time ``feature_time``; the decoder is never run); any image
network from a local path can take its place (``feature_network``, e.g. DINO). Losses are
non-saturating (hinge optional), with R1 on real data through the frozen features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from distill.core.attention import twice_differentiable_attention
from distill.core.errors import ConfigError
from distill.core.gan import D_LOSSES, G_LOSSES, mean_probability, r1_penalty
from distill.core.prediction import fm_noise
from distill.methods.base import Method, SamplingPlan, check_choice
from distill.nets.discriminator import FeatureHeads, data_shape_of
from distill.nets.features import encoder_layers, read_features
from distill.nets.freezing import freeze_, frozen, frozen_parameter_names, trainable_fraction
from distill.students.generator import (
    check_generator_times,
    clamp_generator_times,
    sampling_times,
    training_sample,
)

log = logging.getLogger(__name__)

LOSSES = ("ns", "hinge")
HEADS_REDUCTIONS = ("mean", "sum")


class GDD(Method):
    """Args:
    generator_times: the generator's FM times (GDD: [1.0]; the 2-step variant adds one more). A
        time above the student's largest noise level (EDM: s = 80/81, sigma 80) is lowered to it
        when the networks attach, so the generator computes GDD's ``g(80 z, 80)``.
    frozen_layers: ``none`` (GDD), ``gdd`` (GDD-I: the GDD code's name rule), ``conv`` (every
        convolution) or a list of parameter-name patterns.
    feature_network: a frozen image network (``distill.nets.feature_network.FrozenFeatureNetwork``)
        to read instead of the teacher's encoder; never saved in checkpoints.
    feature_layers: teacher layers to read; None: every down block and the middle block.
    feature_time: FM time at which the teacher reads the images (fresh noise; 0 reads them clean).
    head_width: hidden width of vector heads (MLP teachers, token features).
    loss: ``ns`` (GDD) or ``hinge``.
    heads_reduction: ``mean`` or ``sum`` (GDD's code, ``training/loss.py:239, 273, 282, 303``) of the
        D, G and R1 losses over the discriminator's heads; with Adam only R1's weight relative to
        the D loss changes (by the number of heads).
    r1_gamma: R1 weight on real data (GDD: 1e-4); 0 disables.
    r1_every: lazy R1: apply every k discriminator steps, scaled by k (StyleGAN2).
    disc_lr_ratio: discriminator lr / generator lr (GDD ImageNet: 4e-5 / 8e-6 = 5).
    name: the sampler name on result rows.
    """

    name = "gdd"
    data_role = "real"  # the discriminator's real side is data
    optimizer_names = ("student", "discriminator")

    def __init__(
        self,
        generator_times: Sequence[float] = (1.0,),
        frozen_layers: str | Sequence[str] = "none",
        feature_network: nn.Module | None = None,
        feature_layers: Sequence[str] | None = None,
        feature_time: float = 0.0,
        head_width: int = 128,
        loss: str = "ns",
        heads_reduction: str = "mean",
        r1_gamma: float = 1e-4,
        r1_every: int = 1,
        disc_lr_ratio: float = 1.0,
        name: str = "gdd",
    ):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        check_choice("heads_reduction", heads_reduction, HEADS_REDUCTIONS)
        if not 0 <= feature_time < 1:
            raise ConfigError(f"method.objective.feature_time={feature_time} must be in [0, 1)")
        if r1_every < 1:
            raise ConfigError(f"method.objective.r1_every={r1_every} must be >= 1")
        self.name = name
        self.times = check_generator_times(generator_times)
        self.frozen_layers = frozen_layers if isinstance(frozen_layers, str) else list(frozen_layers)
        # A plain tuple keeps the frozen network out of the module tree: out of checkpoints and optimizers.
        self.external: tuple[nn.Module, ...] = (feature_network,) if feature_network is not None else ()
        self.feature_layers, self.feature_time, self.head_width = feature_layers, feature_time, head_width
        self.d_loss, self.g_loss = D_LOSSES[loss], G_LOSSES[loss]
        self.heads_reduction = heads_reduction
        self.r1_gamma, self.r1_every, self.disc_lr_ratio = r1_gamma, r1_every, disc_lr_ratio
        self.frozen_names: set[str] = set()
        self.fraction = 1.0
        self.heads: nn.Module | None = None

    # --- networks ---------------------------------------------------------------------------
    @property
    def double_backward(self) -> bool:
        return self.r1_gamma > 0  # R1 differentiates D's gradient on real data

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.times = clamp_generator_times(self.times, student)
        if self.heads is not None:
            return
        self.frozen_names = frozen_parameter_names(student, self.frozen_layers)
        freeze_(student, self.frozen_names)
        self.fraction = trainable_fraction(student)
        if self.frozen_layers != "none":
            log.info(
                "GDD-I: %d parameter tensors frozen, %.1f%% of parameters train",
                len(self.frozen_names),
                100 * self.fraction,
            )
            if not self.frozen_names:
                log.warning("method.objective.frozen_layers=%r froze nothing in this network", self.frozen_layers)
        device = next(student.parameters()).device
        x = torch.zeros(2, *data_shape_of(student), device=device)
        self.heads = FeatureHeads(self._probe(teacher, x), width=self.head_width).to(device)

    def _probe(self, teacher: nn.Module, x: Tensor) -> list[tuple[int, ...]]:
        with torch.no_grad():
            return [tuple(f.shape[1:]) for f in self.features(x, teacher)]

    def _teacher_layers(self, root: nn.Module) -> list[str]:
        return list(self.feature_layers) if self.feature_layers else encoder_layers(root)

    def features(self, x: Tensor, teacher: nn.Module) -> list[Tensor]:
        """Frozen multi-scale features of images x (gradients flow to x, never to the backbone).

        An analytic teacher has no layers to read: its "features" are the (noised) samples themselves.
        """
        if self.external:
            return self.external[0].to(x.device)(x)
        root = getattr(teacher, "model", teacher)
        s = torch.full((x.shape[0],), self.feature_time, device=x.device, dtype=x.dtype)
        x_s = fm_noise(x, torch.randn_like(x), s) if self.feature_time > 0 else x
        return read_features(root, self._teacher_layers, x_s, s)

    def discriminate(self, x: Tensor, teacher: nn.Module) -> list[Tensor]:
        return self.heads(self.features(x, teacher))

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        if optimizer == "discriminator":
            return self.heads.parameters()
        return super().trainable_parameters(optimizer, student)

    def lr_scale(self, optimizer: str, step: int) -> float:
        return self.disc_lr_ratio if optimizer == "discriminator" else 1.0

    # --- losses ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if phase == "discriminator":
            return self.discriminator_loss(x0, teacher, student, step)
        x_hat, _ = training_sample(student, torch.randn_like(x0), self.times)
        with frozen(self.heads):  # G's step: gradients reach the generator only
            logits = self.discriminate(x_hat, teacher)
            g_loss = self._over_heads(self.g_loss(logits), logits)
        return {"loss": g_loss, "trainable_fraction": torch.tensor(self.fraction)}

    def discriminator_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        with torch.no_grad():
            x_hat, _ = training_sample(student, torch.randn_like(x0), self.times)
        use_r1 = self.r1_gamma > 0 and (step + 1) % self.r1_every == 0  # lazy R1: every r1_every-th D step
        real = x0.detach().requires_grad_(use_r1)
        with twice_differentiable_attention() if use_r1 else nullcontext():  # R1 differentiates a gradient
            real_logits = self.discriminate(real, teacher)
        fake_logits = self.discriminate(x_hat, teacher)
        d_loss = self._over_heads(self.d_loss(real_logits, fake_logits), real_logits)
        terms = {
            "gan_d": d_loss.detach(),
            "p_real": mean_probability(real_logits),
            "p_fake": mean_probability(fake_logits),
        }
        if use_r1:
            r1 = self.r1_every * r1_penalty(real, real_logits, self.r1_gamma, self.heads_reduction)
            d_loss = d_loss + r1
            terms["r1"] = r1.detach()
        return {"loss": d_loss, **terms}

    def _over_heads(self, mean_loss: Tensor, logits: list[Tensor]) -> Tensor:
        """A loss averaged over heads (``distill.core.gan``), summed instead where ``heads_reduction`` says."""
        return mean_loss * len(logits) if self.heads_reduction == "sum" else mean_loss

    # --- sampling ---------------------------------------------------------------------------
    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        return SamplingPlan(student, sampling_times(self.times, nfe).tolist(), renoise=True)
