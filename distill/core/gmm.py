"""Isotropic Gaussian mixtures: the one data distribution whose noised marginals are closed-form.

Noising ``x = alpha * x0 + sigma * eps`` with ``x0 ~ N(mu_k, tau_k^2 I)`` gives
``x | k ~ N(alpha mu_k, (alpha^2 tau_k^2 + sigma^2) I)``, so the posterior means E[x0 | x] and
E[eps | x] (hence the exact denoiser, velocity and score) are weighted sums over components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.core.tensors import append_dims


@dataclass(frozen=True)
class GaussianMixture:
    """``sum_k weights[k] * N(means[k], stds[k]^2 I)`` in ``dim`` dimensions.

    Args:
        means: (K, D) component means.
        stds: (K,) isotropic component standard deviations.
        weights: (K,) mixture weights, summing to one.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples, shape (n, D), in the mixture's dtype."""
        k = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * noise

    def posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Exact (E[x0 | x], E[eps | x]) for ``x = alpha x0 + sigma eps``.

        Args:
            x: (B, D) noisy points.
            alpha, sigma: (B,) signal and noise scales.
        """
        means, stds, weights = (v.to(x) for v in (self.means, self.stds, self.weights))
        a, s = append_dims(alpha, 3), append_dims(sigma, 3)  # (B, 1, 1)
        var = a**2 * stds[None, :, None] ** 2 + s**2  # (B, K, 1)
        resid = x[:, None, :] - a * means[None]  # (B, K, D)
        log_prob = (
            -0.5 * (resid**2).sum(-1) / var[..., 0]
            - 0.5 * self.dim * torch.log(2 * math.pi * var[..., 0])
            + torch.log(weights)[None]
        )
        resp = torch.softmax(log_prob, dim=1)[..., None]  # (B, K, 1)
        # Per-component Gaussian posteriors, then mixed by responsibility.
        x0_k = means[None] + a * stds[None, :, None] ** 2 / var * resid
        eps_k = s / var * resid
        return (resp * x0_k).sum(1), (resp * eps_k).sum(1)


def ring_mixture(
    num_modes: int = 8, radius: float = 2.0, std: float = 0.15, dtype: torch.dtype = torch.float64
) -> GaussianMixture:
    """The classic 2-D benchmark: ``num_modes`` equal Gaussians evenly spaced on a circle."""
    angles = torch.arange(num_modes, dtype=dtype) * (2 * math.pi / num_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    stds = torch.full((num_modes,), std, dtype=dtype)
    weights = torch.full((num_modes,), 1.0 / num_modes, dtype=dtype)
    return GaussianMixture(means, stds, weights)
