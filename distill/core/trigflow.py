"""Any canonical velocity model seen as a TrigFlow network (docs/methods.md 1.5, 4.1).

TrigFlow noises ``x_t = cos t x0 + sigma_d sin t eps`` (``distill.core.process.TrigFlow``). With
``c = cos t + sigma_d sin t`` its state and time in flow-matching coordinates are
``x_s = x_t / c`` and ``s = sigma_d sin t / c``, so an FM velocity ``v(x_s, s) = eps - x0`` gives
the TrigFlow field exactly:

    sigma_d F = dx_t/dt = -sin t x0 + sigma_d cos t eps
              = (sigma_d cos t - sin t) x_s + sigma_d v(x_s, s) / c,

(substitute ``x0 = x_s - s v`` and ``eps = x_s + (1 - s) v``). ``c >= min(1, sigma_d)`` on
[0, pi/2], so nothing is singular; the scalings are still computed in float64 (style of
``distill.core.process``) and cast to the state's dtype. Every function is differentiable in both
x and t, which sCM's JVP needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distill.core.tensors import append_dims


def trig_time(sigma: float | Tensor, sigma_data: float) -> Tensor:
    """TrigFlow time ``t = arctan(sigma / sigma_d)`` of an EDM noise level ``sigma``."""
    return torch.atan(torch.as_tensor(sigma, dtype=torch.float64) / sigma_data)


def fm_time(t: Tensor, sigma_data: float) -> Tensor:
    """FM time ``s = sigma_d sin t / (cos t + sigma_d sin t)`` of TrigFlow time ``t`` (float64)."""
    t = t.double()
    noise = sigma_data * torch.sin(t)
    return noise / (torch.cos(t) + noise)


def _scales(t: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(cos t, sin t, c = cos t + sigma_d sin t, s) in float64, each (B,)."""
    t = t.double()
    cos, sin = torch.cos(t), torch.sin(t)
    c = cos + sigma_data * sin
    return cos, sin, c, sigma_data * sin / c


def trig_F(model: nn.Module, x_over_sd: Tensor, t: Tensor, sigma_data: float) -> Tensor:
    """TrigFlow ``F(x_t / sigma_d, t)`` of a velocity model ``model(x_s, s) -> v`` (docs/methods.md 4.2).

    Args:
        model: canonical FM velocity model.
        x_over_sd: (B, ...) TrigFlow state divided by sigma_d.
        t: (B,) TrigFlow times in [0, pi/2] (any float dtype; float64 keeps the most precision).
        sigma_data: sigma_d.

    Returns:
        (B, ...) F in ``x_over_sd``'s dtype, with ``sigma_d F = dx_t/dt`` of the model's flow.
    """
    cos, sin, c, s = _scales(t, sigma_data)
    dtype, nd = x_over_sd.dtype, x_over_sd.ndim
    x_s = x_over_sd * append_dims((sigma_data / c).to(dtype), nd)
    v = model(x_s, s.to(dtype))
    coef_x = append_dims(((sigma_data * cos - sin) / sigma_data).to(dtype), nd)
    coef_v = append_dims((1 / c).to(dtype), nd)
    return coef_x * x_s + coef_v * v


def trig_consistency(x_t: Tensor, t: Tensor, F: Tensor, sigma_data: float) -> Tensor:
    """The consistency function ``f = cos t x_t - sin t sigma_d F`` (docs/methods.md 4.1); f(x, 0) = x.

    Args:
        x_t: (B, ...) TrigFlow state.
        t: (B,) TrigFlow times.
        F: (B, ...) TrigFlow network output at ``(x_t / sigma_d, t)``.
    """
    t = t.double()
    cos = append_dims(torch.cos(t).to(x_t.dtype), x_t.ndim)
    sin = append_dims((sigma_data * torch.sin(t)).to(x_t.dtype), x_t.ndim)
    return cos * x_t - sin * F


def trig_consistency_fn(model: nn.Module, x_t: Tensor, t: Tensor, sigma_data: float) -> Tensor:
    """``f(x_t, t)`` of a velocity model; equals its FM data estimate ``x_s - s v(x_s, s)``."""
    return trig_consistency(x_t, t, trig_F(model, x_t / sigma_data, t, sigma_data), sigma_data)


def trig_noise(x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """``x_t = cos t x0 + sin t z`` with ``z ~ N(0, sigma_d^2 I)``. x0, z: (B, ...); t: (B,)."""
    t = t.double()
    cos = append_dims(torch.cos(t).to(x0.dtype), x0.ndim)
    sin = append_dims(torch.sin(t).to(x0.dtype), x0.ndim)
    return cos * x0 + sin * z


def sample_trig_time(
    n: int, p_mean: float, p_std: float, sigma_data: float, device: torch.device | str | None = None
) -> Tensor:
    """sCM's proposal ``ln(sigma_d tan t) ~ N(p_mean, p_std^2)``: (n,) float64 times in (0, pi/2)."""
    sigma = torch.exp(p_mean + p_std * torch.randn(n, dtype=torch.float64, device=device))
    return torch.atan(sigma / sigma_data).clamp(1e-6, 0.5 * math.pi - 1e-6)
