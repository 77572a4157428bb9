"""Adversarial score identity distillation's GAN terms (SiDA, Zhou et al. 2025; docs/methods.md 5.8).

SiDA adds a GAN on real data to SiD (``distill.core.sid``) without a discriminator network of its
own: the fake-score net's encoder output, averaged over channels, gives one logit per location
(``distill.nets.discriminator.channel_mean_logits``). Its fake-score update adds the discriminator
loss on real and generator samples noised alike, and its generator update adds a non-saturating
GAN loss read at SiD's own noised samples. Both keep SiD's scales: the discriminator loss is
multiplied by the batch's mean EDM weight, the generator's by the sample's size over SiD's
normaliser, so either sits beside the loss it joins.
"""

from __future__ import annotations

from torch import Tensor

from distill.core.gan import Logits, ns_d_loss, ns_g_loss

LOGIT_CLAMP = 10.0


def sida_discriminator_loss(real: Logits, fake: Logits, weight: Tensor) -> Tensor:
    """``mean_b(weight_b) (BCE(real, 1) + BCE(fake, 0)) / 2``: the logit means of the non-saturating
    D loss, scaled by the batch's mean EDM weight (weight: (B,) at the fake score's noise levels),
    as SiDA's per-sample weight times the batch-mean BCE reduces to."""
    return weight.mean() * ns_d_loss(real, fake) / 2


def sida_generator_gan_loss(fake: Tensor, normaliser: Tensor, sample_size: int) -> Tensor:
    """``sample_size BCE(clamp(fake, -10, 10), 1) mean_b(1 / normaliser_b)``: the non-saturating G
    loss over every logit of the batch (clamped: no gradient from a logit beyond +-10), in the units
    of SiD's summed, normalised loss (normaliser: SiD's (B,), sample_size: numbers in one sample)."""
    return sample_size * ns_g_loss(fake.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)) * (1 / normaliser).mean()
