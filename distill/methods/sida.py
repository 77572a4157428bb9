"""SiDA (Zhou et al. 2025): SiD with an adversarial loss on real data (docs/methods.md 5.8).

SiD (``distill.methods.sid``) plus a GAN whose discriminator is the fake-score net itself: its
encoder output, averaged over channels, is one logit per location (``channel_mean_logits``), so
the discriminator has no parameters of its own and shares every weight of the fake score's
encoder. Each step, as mingyuanzhou/SiD's ``sida`` branch (sida_training/sida_loss.py,
sida_training_loop.py):

- fake score: SiD's EDM loss on detached generator samples, plus the discriminator loss on those
  samples and on real data, both noised with the same noise level and noise;
- generator: SiD's loss, plus the non-saturating GAN loss of the logits the fake-score net gives at
  SiD's own noised generator samples, the gradient through the frozen fake-score net into them.

The fake score trains alone for the first ``generator_start_step`` steps; the GAN term joins the
generator's loss at ``gan_start_step``, where both terms are halved. The fake score's gradient is
clipped elementwise (``grad_value_clip``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.gan import mean_probability
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.sid import (
    edm_denoising_loss,
    edm_weight,
    lognormal_sigmas,
    sid_generator_loss,
    sid_normaliser,
    sid_sigmas,
)
from distill.core.sida import sida_discriminator_loss, sida_generator_gan_loss
from distill.methods.sid import SiD, differentiable_x0
from distill.nets.discriminator import channel_mean_logits
from distill.nets.features import bottleneck_layer, forward_with_features, read_features
from distill.nets.freezing import evaluating, frozen


class SiDA(SiD):
    """Args (SiD's, with SiDA's alpha 1.0, and):
    gan_weight: the generator's GAN loss weight (SiDA ``--lsg_gan``: 0.01).
    gan_d_weight: the discriminator loss's weight in the fake-score update (``--lsd``: 1).
    generator_start_step: steps in which only the fake score trains (SiDA: while fewer than 100k
        images have been seen, 391 steps at batch 256).
    gan_start_step: the step from which the generator's loss is ``(SiD + GAN) / 2`` instead of SiD
        alone (SiDA: after 200k images, step 782 at batch 256).
    fake_score_grad_value_clip: bound on each element of the fake score's gradient (SiDA: 1); 0 off.
    gan_layer: the fake-score net's layer whose output the logits average; None: its bottleneck
        (an EDM UNet's encoder output, SiDA's; a diffusers UNet's middle block).
    """

    name = "sida"
    data_role = "real"  # the discriminator's real side

    def __init__(
        self,
        init_sigma: float = 2.5,
        alpha: float = 1.0,
        tmax: int = 800,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_data: float = 0.5,
        generator_loss_scale: float = 100.0,
        gan_weight: float = 0.01,
        gan_d_weight: float = 1.0,
        generator_start_step: int = 391,
        gan_start_step: int = 782,
        fake_score_grad_value_clip: float = 1.0,
        gan_layer: str | None = None,
        name: str = "sida",
    ):
        super().__init__(init_sigma, alpha, tmax, p_mean, p_std, sigma_data, generator_loss_scale, name)
        if gan_weight < 0 or gan_d_weight < 0 or fake_score_grad_value_clip < 0:
            raise ConfigError(
                f"method.objective.gan_weight={gan_weight}, gan_d_weight={gan_d_weight} and "
                f"fake_score_grad_value_clip={fake_score_grad_value_clip} must be >= 0"
            )
        if not 0 <= generator_start_step <= gan_start_step:
            raise ConfigError(
                f"method.objective.generator_start_step={generator_start_step}, gan_start_step={gan_start_step}: "
                "need 0 <= generator_start_step <= gan_start_step (the GAN joins a generator that trains)"
            )
        self.gan_weight, self.gan_d_weight = gan_weight, gan_d_weight
        self.generator_start_step, self.gan_start_step = generator_start_step, gan_start_step
        self.fake_score_grad_value_clip, self.gan_layer = fake_score_grad_value_clip, gan_layer

    # --- schedule ---------------------------------------------------------------------------
    def phases(self, step: int) -> Sequence[str]:
        return self.optimizer_names if step >= self.generator_start_step else ("fake_score",)

    def grad_value_clip(self, optimizer: str) -> float:
        return self.fake_score_grad_value_clip if optimizer == "fake_score" else 0.0

    # --- the discriminator: the fake-score net's encoder ---------------------------------------
    def _layers(self, root: nn.Module) -> list[str]:
        return [self.gan_layer] if self.gan_layer else [bottleneck_layer(root)]

    def fake_x0_and_logits(self, x_s: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The fake score's data estimate at x_s and its logits, from one forward."""
        velocity, (features,) = forward_with_features(self.fake_score, self._layers(self.fake_score), x_s, s)
        return velocity_to_x0(x_s, s, velocity), channel_mean_logits(features)

    def real_logits(self, x_s: Tensor, s: Tensor) -> Tensor:
        """The logits alone: the fake score's forward stops after the encoder."""
        (features,) = read_features(self.fake_score, self._layers, x_s, s)
        return channel_mean_logits(features)

    # --- losses -------------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if phase == "fake_score":
            return self.fake_score_loss(x0, student)
        return self.generator_loss(x0, teacher, student, step)

    def fake_score_loss(self, x0: Tensor, student: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad(), evaluating(student):  # SiDA generates the fake score's data without dropout
            y = self.generate(student, x0)
        sigma = lognormal_sigmas(len(y), self.p_mean, self.p_std, y)
        score, d_loss, real, fake = self.fake_score_terms(y, x0, sigma, torch.randn_like(y))
        return {
            "loss": score + self.gan_d_weight * d_loss,
            "score": score.detach(),
            "gan_d": d_loss.detach(),
            "p_real": mean_probability(real),
            "p_fake": mean_probability(fake),
        }

    def fake_score_terms(
        self, y: Tensor, x_real: Tensor, sigma: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """SiD's EDM loss of the fake score on generator samples y and the discriminator loss of y
        against real data x_real, both noised to EDM levels sigma (B,) with the same eps.
        Returns (score loss, D loss, real logits, fake logits)."""
        s = sigma / (1 + sigma)
        y_fake, fake = self.fake_x0_and_logits(fm_noise(y, eps, s), s)
        real = self.real_logits(fm_noise(x_real, eps, s), s)
        score = edm_denoising_loss(y_fake, y, sigma, self.sigma_data)
        return score, sida_discriminator_loss(real, fake, edm_weight(sigma, self.sigma_data)), real, fake

    def generator_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        y = self.generate(student, x0)
        sid, gan = self.generator_terms(y, teacher, sid_sigmas(len(y), self.tmax, y), torch.randn_like(y))
        total = self.generator_loss_scale * sid
        if step >= self.gan_start_step:
            total = 0.5 * total + 0.5 * self.gan_weight * gan
        return {"loss": total, "sid": sid.detach(), "gan_g": gan.detach()}

    def generator_terms(self, y: Tensor, teacher: nn.Module, sigma: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """SiD's generator loss and SiDA's GAN loss at generator samples y noised to EDM levels sigma
        (B,) with eps, both read from the same frozen fake-score forward, the gradient into y."""
        s = sigma / (1 + sigma)
        x_s = fm_noise(y, eps, s)
        y_real = differentiable_x0(teacher, x_s, s)
        with frozen(self.fake_score), evaluating(self.fake_score):  # as SiDA: no dropout, no weight gradient
            y_fake, logits = self.fake_x0_and_logits(x_s, s)
        gan = sida_generator_gan_loss(logits, sid_normaliser(y, y_real), y[0].numel())
        return sid_generator_loss(y, y_real, y_fake, self.alpha), gan
