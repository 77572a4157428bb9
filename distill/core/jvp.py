"""Jacobian-vector products that work on real networks (sCM, MeanFlow).

``torch.func.jvp`` needs forward-mode AD in every op. PyTorch's flash and memory-efficient
attention kernels have none, so the exact path pins scaled-dot-product attention to the math
kernel, which has it. Where forward AD is still unavailable (a custom op, an old kernel), a
finite difference stands in, with one warning, and can be chosen outright by config.

Both run in full precision (``distill.core.precision``): autocast is off inside, and each tangent
takes its primal's dtype, so under ``bf16-mixed`` the JVP, its primal output and its tangents are fp32
(py-meanflow ``meanflow/models/meanflow.py:54-57``; FastGen ``precision_amp_jvp="float32"``,
``fastgen/methods/consistency_model/sCM.py:166-179``). A tangent of order 1/256 of its primal would
otherwise be of the order of bf16's rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distill.core.attention import twice_differentiable_attention
from distill.core.precision import full_precision

JVP_MODES = ("exact", "finite_difference")
_warned_fallback = False


def finite_difference_jvp(
    fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor], step: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """``(fn(p), J t)`` by a central difference: O(step^2) error, three evaluations of ``fn``.

    The primal output is the plain ``fn(p)`` call, so gradients flow through it as usual; the
    tangent is computed without a graph (every method treats it as a constant).
    """
    out = fn(*primals)
    with torch.no_grad():
        plus = fn(*(p + step * t for p, t in zip(primals, tangents, strict=True)))
        minus = fn(*(p - step * t for p, t in zip(primals, tangents, strict=True)))
    return out, (plus - minus) / (2 * step)


def exact_jvp(
    fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """``torch.func.jvp`` with attention pinned to the math kernel (the one with forward AD)."""
    with twice_differentiable_attention():
        return torch.func.jvp(fn, tuple(primals), tuple(tangents))


def jvp(
    fn: Callable[..., Tensor],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor],
    mode: str = "exact",
    fd_step: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """``(fn(*primals), d/de fn(*(primals + e tangents)) at e = 0)``.

    Args:
        mode: ``exact`` (forward-mode AD, falling back to finite differences with a warning
            where an op has no forward AD) or ``finite_difference``.
        fd_step: the central-difference step (in units of the tangent).

    Autocast is off inside (both outputs in the primals' dtype, fp32 under ``bf16-mixed``).
    """
    if mode not in JVP_MODES:
        raise ValueError(f"jvp mode {mode!r} is unknown; choose one of {JVP_MODES}")
    # A tangent from an autocast forward (a teacher's bf16 velocity) is promoted to its primal's dtype.
    tangents = [
        t.to(p.dtype) if t.is_floating_point() and p.is_floating_point() else t
        for p, t in zip(primals, tangents, strict=True)
    ]
    with full_precision():
        return _jvp(fn, primals, tangents, mode, fd_step)


def _jvp(
    fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor], mode: str, fd_step: float
) -> tuple[Tensor, Tensor]:
    if mode == "finite_difference":
        return finite_difference_jvp(fn, primals, tangents, fd_step)
    try:
        return exact_jvp(fn, primals, tangents)
    except (NotImplementedError, RuntimeError) as err:
        if "forward" not in str(err).lower() and "jvp" not in str(err).lower():
            raise
        global _warned_fallback
        if not _warned_fallback:
            warnings.warn(
                f"forward-mode AD is unavailable in this network ({str(err).splitlines()[0]}); using a "
                "finite-difference JVP instead (set method.objective.jvp=finite_difference to silence this)",
                stacklevel=3,
            )
            _warned_fallback = True
        return finite_difference_jvp(fn, primals, tangents, fd_step)
