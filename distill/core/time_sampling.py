"""Training-time distributions over noise levels: pure functions of (n, generator, dtype)."""

from __future__ import annotations

import torch
from torch import Tensor


def _randn(
    n: int,
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Tensor:
    return torch.randn(n, generator=generator, dtype=dtype, device=device)


def sample_uniform(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """FM times ``s ~ U(0, 1)``, shape (n,)."""
    return torch.rand(n, generator=generator, dtype=dtype, device=device)


def sample_logit_normal(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """FM times ``s = sigmoid(mean + std z)`` (SD3 logit-normal), shape (n,)."""
    return torch.sigmoid(mean + std * _randn(n, generator, dtype, device))


def sample_edm_sigma(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM noise levels ``ln sigma ~ N(p_mean, p_std^2)`` (docs/methods.md 1.3); returns sigma, shape (n,)."""
    return torch.exp(p_mean + p_std * _randn(n, generator, dtype, device))


def shift_time(s: Tensor, shift: float) -> Tensor:
    """SD3 time shift ``s' = k s / (1 + (k - 1) s)`` (docs/methods.md 1.4); k > 1 moves s towards noise."""
    return shift * s / (1 + (shift - 1) * s)
