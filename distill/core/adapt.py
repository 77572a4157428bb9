"""Wrap a native model (any process, any prediction kind) as the canonical FM velocity model, and back.

A native model ``native(x_t, t)`` predicts a quantity of kind ``kind`` (see
``distill.core.prediction``) for the state ``x_t = alpha(t) x0 + sigma(t) eps`` of ``process``.
Since every process is FM up to a rescaling of state and time, the wrapper is exact:

    t = from_fm_time(s),  x_t = (alpha + sigma)(t) x_s,  (x0, eps) = to_x0_eps(native(x_t, t)),
    v = eps - x0.

Where ``from_fm_time`` clamps (EDM to [``sigma_min``, ``sigma_max``], VP-cosine to its logSNR
range, VP-discrete to [0, T - 1]) the native model is queried at the clamped time, so the velocity
there is that of the nearest representable time, not of s itself. In particular no x0-predicting
network is asked about sigma = 0, where its velocity would be 0/0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distill.core.prediction import VelocityFn, check_kind, from_x0_eps, to_x0_eps
from distill.core.process import NoiseProcess
from distill.core.tensors import append_dims

NativeModel = Callable[[Tensor, Tensor], Tensor]
"""``native(x_t, t) -> prediction`` in some process's native time ``t`` of shape (B,)."""


def _time_dtype(x: Tensor) -> torch.dtype:
    # Timesteps such as 999.0 are not representable in bf16/fp16: never go below float32.
    return torch.promote_types(x.dtype, torch.float32)


def to_velocity_model(native: NativeModel, process: NoiseProcess, kind: str, sigma_data: float = 1.0) -> VelocityFn:
    """Canonical velocity model ``(x_s, s) -> eps - x0`` from a native predictor.

    Args:
        native: ``native(x_t, t)`` predicting ``kind`` for ``process``; it receives ``x_t`` in
            ``x_s``'s dtype and ``t`` (B,) in that dtype promoted to at least float32.
        process: the native model's noise process.
        kind: the native prediction kind, one of ``PREDICTION_KINDS``.
        sigma_data: TrigFlow data scale for ``kind = "trig"``.

    Returns:
        ``model(x_s, s)`` with x_s (B, ...) and s (B,) in FM coordinates, returning (B, ...) in
        x_s's dtype. Conversions are done in float64.
    """
    check_kind(kind)

    def velocity(x_s: Tensor, s: Tensor) -> Tensor:
        s64 = s.to(torch.float64)
        t = process.from_fm_time(s64)
        alpha, sigma = process.alpha(t), process.sigma(t)
        x_t = x_s.to(torch.float64) * append_dims(alpha + sigma, x_s.ndim)
        pred = native(x_t.to(x_s.dtype), t.to(_time_dtype(x_s)))
        x0, eps = to_x0_eps(kind, pred.to(torch.float64), x_t, alpha, sigma, sigma_data)
        return (eps - x0).to(x_s.dtype)

    return velocity


def from_velocity_model(model: VelocityFn, process: NoiseProcess, kind: str, sigma_data: float = 1.0) -> NativeModel:
    """Native predictor ``(x_t, t) -> prediction of kind`` from a canonical velocity model.

    Used by methods that consume e.g. TrigFlow ``F`` (``process = TrigFlow(sd), kind = "trig"``)
    or an EDM denoiser (``process = EDM(), kind = "x0"``).

    Args:
        model: canonical ``model(x_s, s) -> v``; it receives ``x_s`` in ``x_t``'s dtype and
            ``s`` (B,) in that dtype.
        process: the native process whose time and state the result takes.
        kind: the prediction kind to return.
        sigma_data: TrigFlow data scale for ``kind = "trig"``.

    Returns:
        ``native(x_t, t)`` with x_t (B, ...) and t (B,), returning (B, ...) in x_t's dtype.
    """
    check_kind(kind)

    def native(x_t: Tensor, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        alpha, sigma = process.alpha(t64), process.sigma(t64)
        s = sigma / (alpha + sigma)
        x_s = x_t.to(torch.float64) / append_dims(alpha + sigma, x_t.ndim)
        v = model(x_s.to(x_t.dtype), s.to(x_t.dtype)).to(torch.float64)
        s_b = append_dims(s, x_t.ndim)
        x0, eps = x_s - s_b * v, x_s + (1 - s_b) * v
        return from_x0_eps(kind, x0, eps, alpha, sigma, sigma_data).to(x_t.dtype)

    return native
