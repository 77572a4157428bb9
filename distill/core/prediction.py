"""Exact conversions between what a network predicts and the pair (x0, eps).

For ``x = alpha x0 + sigma eps`` (docs/methods.md 1.1, 1.4, 1.5) the supported kinds are

- ``eps``:  eps.
- ``x0``:   x0.
- ``v``:    v = alpha eps - sigma x0 (VP v-prediction).
- ``flow``: u = eps - x0 (flow-matching velocity, in any process).
- ``trig``: F = alpha eps - sigma x0 / sigma_data^2 (TrigFlow F, where alpha = cos t and
  sigma = sigma_data sin t).

Each kind is an invertible linear map of (x0, eps) given x; the inverses below are exact for
any (alpha, sigma), the ``v`` and ``trig`` ones dividing by a normaliser that is 1 on their home
process. ``eps`` cannot recover x0 at alpha = 0, nor ``x0`` recover eps at sigma = 0.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from distill.core.tensors import append_dims

PREDICTION_KINDS: tuple[str, ...] = ("eps", "x0", "v", "flow", "trig")

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""Canonical model ``(x_s, s) -> v = eps - x0``, with ``s`` of shape (B,) in FM time."""


def check_kind(kind: str) -> None:
    """Raise ValueError naming the valid kinds unless ``kind`` is one of them."""
    if kind not in PREDICTION_KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; valid kinds: {PREDICTION_KINDS}")


def to_x0_eps(
    kind: str, pred: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, sigma_data: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Recover (x0, eps) from a prediction of ``kind`` at ``x = alpha x0 + sigma eps``.

    Args:
        kind: one of ``PREDICTION_KINDS``.
        pred: (B, ...) network prediction.
        x: (B, ...) noisy state.
        alpha, sigma: (B,) scales of the process at the state's time.
        sigma_data: TrigFlow data scale, used by ``trig`` only.

    Returns:
        (x0, eps), each (B, ...).
    """
    check_kind(kind)
    a, s = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "v":
        norm = a**2 + s**2
        return (a * x - s * pred) / norm, (s * x + a * pred) / norm
    if kind == "flow":
        norm = a + s
        return (x - s * pred) / norm, (x + a * pred) / norm
    # trig: norm = alpha^2 + (sigma / sigma_data)^2 = 1 on the TrigFlow process.
    sd2 = sigma_data**2
    norm = a**2 + s**2 / sd2
    return (a * x - s * pred) / norm, (s * x / sd2 + a * pred) / norm


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, sigma_data: float = 1.0) -> Tensor:
    """The prediction of ``kind`` that corresponds to (x0, eps).

    Args:
        kind: one of ``PREDICTION_KINDS``.
        x0, eps: (B, ...) clean data and noise.
        alpha, sigma: (B,) scales of the process.
        sigma_data: TrigFlow data scale, used by ``trig`` only.

    Returns:
        (B, ...) prediction.
    """
    check_kind(kind)
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "flow":
        return eps - x0
    return a * eps - s * x0 / sigma_data**2


def fm_noise(x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
    """The FM state ``x_s = (1 - s) x0 + s eps``. x0, eps: (B, ...); s: (B,)."""
    s = append_dims(s, x0.ndim)
    return (1 - s) * x0 + s * eps


def velocity_to_x0(x: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """FM data estimate ``x0 = x - s v``. x, v: (B, ...); s: (B,)."""
    return x - append_dims(s, x.ndim) * v


def consistency_fn(model: VelocityFn, x: Tensor, s: Tensor) -> Tensor:
    """A velocity model's consistency function, its one-jump DDIM estimate ``f(x_s, s) = x_s - s v(x_s, s)``
    (docs/methods.md 3.2); equals x at s = 0 (the boundary condition)."""
    return velocity_to_x0(x, s, model(x, s))


def velocity_to_eps(x: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """FM noise estimate ``eps = x + (1 - s) v``. x, v: (B, ...); s: (B,)."""
    return x + (1 - append_dims(s, x.ndim)) * v


def x0_to_velocity(x: Tensor, s: Tensor, x0: Tensor) -> Tensor:
    """FM velocity ``v = (x - x0) / s`` from a data estimate; undefined at s = 0. x, x0: (B, ...); s: (B,)."""
    return (x - x0) / append_dims(s, x.ndim)
