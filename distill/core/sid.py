"""Score identity distillation's losses and noise laws (SiD, Zhou et al. 2024; docs/methods.md 5.6).

SiD trains a one-step generator ``y = G(z)`` with a fake-score network ``f_psi`` that tracks the
generator's distribution (EDM's denoising loss on its detached samples), as DMD does. The generator
loss differs: from the score identity ``E[x0 | x_t]`` it follows that, at a noised generator sample
x_t, ``(y_real - y_fake) . (y_real - y)`` estimates the Fisher divergence between the teacher's
and the generator's noised distributions (y_real, y_fake: the teacher's and the fake net's data
estimates). SiD subtracts ``alpha |y_real - y_fake|^2`` (alpha = 1.2) and, unlike DMD, lets the
gradient flow through both networks into y. Everything here is in x0 units, on tensors (B, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def sid_sigmas(n: int, tmax: int, like: Tensor) -> Tensor:
    """The generator loss's noise levels (B,): ``t ~ U(0, tmax / 1000)`` on EDM's Karras ramp from
    sigma_max (t = 1) to sigma_min (t = 0), so tmax = 800 keeps the largest 20% of the ramp out."""
    t = torch.rand(n, device=like.device, dtype=like.dtype) * tmax / 1000
    min_inv, max_inv = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (max_inv + (1 - t) * (min_inv - max_inv)) ** RHO


def lognormal_sigmas(n: int, p_mean: float, p_std: float, like: Tensor) -> Tensor:
    """EDM's training noise levels (B,): ``ln sigma ~ N(p_mean, p_std^2)``."""
    return (torch.randn(n, device=like.device, dtype=like.dtype) * p_std + p_mean).exp()


def sid_normaliser(y: Tensor, y_real: Tensor) -> Tensor:
    """SiD's per-sample loss normaliser (B,): ``mean|y - y_real|`` in float32, at least 1e-5, without
    gradient (SiDA divides its generator's GAN loss by it too)."""
    with torch.no_grad():
        return (y - y_real).abs().float().flatten(1).mean(dim=1).clamp(min=1e-5)


def sid_generator_loss(y: Tensor, y_real: Tensor, y_fake: Tensor, alpha: float) -> Tensor:
    """``(y_real - y_fake) . ((y_real - y) - alpha (y_real - y_fake)) / mean|y - y_real|`` summed
    over each sample, averaged over the batch; the normaliser carries no gradient."""
    scale = sid_normaliser(y, y_real)
    diff = y_real - y_fake
    per_sample = (diff * ((y_real - y) - alpha * diff)).flatten(1).sum(dim=1)
    return (per_sample / scale.to(per_sample.dtype)).mean()


def edm_denoising_loss(y_pred: Tensor, y: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's weighted x0 loss ``(sigma^2 + sigma_d^2) / (sigma sigma_d)^2 |y_pred - y|^2`` with sigma
    (B,), summed over each sample, averaged over the batch (SiD's fake-score loss)."""
    return (edm_weight(sigma, sigma_data) * (y_pred - y).pow(2).flatten(1).sum(dim=1)).mean()


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss weight ``(sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` (B,) at noise levels sigma (B,)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
