"""Per-sample distances and EDM weightings. Every loss returns shape (B,); the caller reduces."""

from __future__ import annotations

import torch
from torch import Tensor


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean of ``(a - b)^2`` over the non-batch dims. a, b: (B, ...) -> (B,)."""
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(dim=1)


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """iCT pseudo-Huber ``sqrt(||a - b||^2 + c^2) - c``, norm over the non-batch dims. -> (B,).

    iCT uses ``c = 0.00054 * sqrt(dim)``; c = 0 gives the plain L2 norm (ECT).
    """
    sq = (a - b).pow(2).reshape(a.shape[0], -1).sum(dim=1)
    return torch.sqrt(sq + c**2) - c


def elementwise_pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """PCM/LCM's pseudo-Huber per element, ``sqrt((a - b)^2 + c^2) - c``, then the mean over the
    non-batch dims -> (B,). Unlike ``pseudo_huber`` (iCT's, on the whole sample's norm)."""
    return (torch.sqrt((a - b).pow(2) + c**2) - c).reshape(a.shape[0], -1).mean(dim=1)


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (docs/methods.md 1.3); (B,) -> (B,)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_precond(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (docs/methods.md 1.3) so that ``D(x) = c_skip x + c_out F(c_in x, c_noise)``.

    Args:
        sigma: (B,) noise levels.
        sigma_data: data standard deviation.

    Returns:
        (c_skip, c_out, c_in, c_noise), each (B,); c_noise = ln(sigma) / 4.
    """
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = 0.25 * torch.log(sigma)
    return c_skip, c_out, c_in, c_noise
