"""Bezier curves in the paper's parameter tau (0: noise, 1: data), docs/methods.md 9.

A degree-n curve is given by its control points ``P``, one tensor of shape (n + 1, B, ...) (P_0
first): sample b's curve is ``B_b(tau) = sum_i C(n, i) (1 - tau)^(n - i) tau^i P_i[b]``. Times
are ``tau`` of shape (B,) (one per sample) or (M,) for a basis matrix. In FM time s (1: noise),
``tau = 1 - s`` and ``dx/ds = -B'(tau)``.
"""

from __future__ import annotations

from math import comb

import torch
from torch import Tensor

from distill.core.tensors import append_dims


def bernstein(degree: int, tau: Tensor) -> Tensor:
    """The Bernstein basis ``C(n, i) (1 - tau)^(n - i) tau^i``: (M,) -> (M, n + 1)."""
    i = torch.arange(degree + 1, device=tau.device, dtype=tau.dtype)
    coef = torch.tensor([comb(degree, k) for k in range(degree + 1)], device=tau.device, dtype=tau.dtype)
    t = tau[:, None]
    return coef * t.pow(i) * (1 - t).pow(degree - i)


def _combine(weights: Tensor, points: Tensor) -> Tensor:
    """``sum_i weights[b, i] points[i, b]``: weights (B, k), points (k, B, ...) -> (B, ...)."""
    return (append_dims(weights.t(), points.ndim) * points).sum(0)


def bezier(points: Tensor, tau: Tensor) -> Tensor:
    """``B(tau)``, docs/methods.md 9: points (n + 1, B, ...), tau (B,) -> (B, ...)."""
    return _combine(bernstein(points.shape[0] - 1, tau), points)


def bezier_velocity(points: Tensor, tau: Tensor) -> Tensor:
    """``B'(tau) = n sum_i C(n - 1, i) (1 - tau)^(n - 1 - i) tau^i (P_(i+1) - P_i)``: (B, ...).

    A degree-0 curve (one point) stands still.
    """
    degree = points.shape[0] - 1
    if degree == 0:
        return torch.zeros_like(points[0])
    return degree * _combine(bernstein(degree - 1, tau), points[1:] - points[:-1])


def fit_interior(start: Tensor, end: Tensor, tau: Tensor, samples: Tensor, degree: int) -> Tensor:
    """Least-squares interior control points ``P_1 .. P_(n-1)`` with ``P_0 = start``, ``P_n = end``.

    Minimises ``sum_k ||B(tau_k) - x_k||^2`` over the interior points of every sample at once: the
    design matrix A (M, n - 1) holds the interior basis functions at the sample times, and the
    normal equations ``A^T A P = A^T (x - b_0 P_0 - b_n P_n)`` are solved in closed form.

    Args:
        start, end: (B, ...) the fixed end points (noise and data ends).
        tau: (M,) the sample times, shared by the batch (repeats allowed: several teachers).
        samples: (M, B, ...) states ``x_k`` on the trajectories, at ``tau``.
        degree: n >= 1; n = 1 has no interior point.

    Returns:
        (n - 1, B, ...) interior control points.

    Raises:
        ValueError: fewer distinct sample times than interior points (the system is singular).
    """
    if degree < 1:
        raise ValueError(f"a Bezier curve with fixed end points has degree >= 1, not {degree}")
    if degree == 1:
        return start.new_zeros((0, *start.shape))
    distinct = torch.unique(tau).numel()
    if distinct < degree - 1:
        raise ValueError(f"{degree - 1} interior control points need as many distinct sample times, got {distinct}")
    basis = bernstein(degree, tau.to(samples.dtype))
    design = basis[:, 1:-1]
    residual = samples - _outer(basis[:, 0], start) - _outer(basis[:, -1], end)
    rhs = torch.einsum("mi,mb->ib", design, residual.flatten(1))
    interior = torch.linalg.solve(design.t() @ design, rhs)
    return interior.reshape(degree - 1, *start.shape)


def _outer(weights: Tensor, point: Tensor) -> Tensor:
    """``weights[k] point``: (M,), (B, ...) -> (M, B, ...)."""
    return append_dims(weights, point.ndim + 1) * point
