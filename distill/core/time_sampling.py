"""Training-time distributions over noise levels: pure functions of (n, generator, dtype)."""

from __future__ import annotations

import math

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


def sample_truncated_log_t(
    n: int,
    low: float,
    high: float,
    mean: float = 0.0,
    std: float = 0.2,
    df: float = 0.01,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM sigmas with ``(ln sigma - mean) / std`` Student-t with ``df`` degrees of freedom, truncated to
    ``[low, high]`` (TCM, docs/methods.md 3.7); float64, shape (n,).

    Inverse-CDF sampling between the bounds' CDF values, as FastGen's
    ``EDMNoiseSchedule._truncated_log_t_sample`` does; the uniform draw is torch's (seeded with the run),
    not numpy's. A small ``df`` makes the law nearly log-uniform over a wide truncated range.
    """
    from scipy import stats  # scipy's Student-t CDF and its inverse; torch has neither

    lo, hi = ((math.log(bound) - mean) / std for bound in (low, high))
    a, b = stats.t.cdf(lo, df), stats.t.cdf(hi, df)
    u = a + (b - a) * torch.rand(n, generator=generator, dtype=torch.float64)
    log_sigma = torch.from_numpy(stats.t.ppf(u.numpy(), df)) * std + mean
    return log_sigma.exp().clamp(low, high).to(device)
