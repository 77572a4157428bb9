"""Distribution matching (DMD / DMD2, docs/methods.md 5.1-5.2) as pure functions of denoised estimates.

The generator's sample x_hat is noised to x_s; the real (teacher) and fake (trained on the
generator's own samples) denoisers disagree about where x_s came from, and their difference is the
gradient of KL(p_fake || p_real) with respect to x_hat. The loss below has exactly that gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.grids import karras_grid
from distill.core.tensors import append_dims

# DMD2's EDM noise table (tianweiy/DMD2 main/edm/train_edm.py:473-479): 1000 Karras sigmas, rho 7.
KARRAS_STEPS, KARRAS_SIGMA_MIN, KARRAS_SIGMA_MAX, KARRAS_RHO = 1000, 0.002, 80.0, 7.0


def dm_gradient(x_hat: Tensor, mu_real: Tensor, mu_fake: Tensor) -> Tensor:
    """``(mu_fake - mu_real) / mean|x_hat - mu_real|`` per sample, in float64, NaNs zeroed.

    The normaliser is DMD's weight ``w_t`` in normalised form: it makes the step size independent
    of how far the teacher moves the sample, so every noise level contributes alike.
    """
    x_hat, mu_real, mu_fake = x_hat.double(), mu_real.double(), mu_fake.double()
    scale = (x_hat - mu_real).abs().flatten(1).mean(dim=1)
    grad = (mu_fake - mu_real) / append_dims(scale, x_hat.ndim)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def dm_loss(x_hat: Tensor, grad: Tensor) -> Tensor:
    """``0.5 mse(x_hat, stopgrad(x_hat - grad))``: its gradient with respect to x_hat is grad / numel."""
    target = (x_hat.double() - grad).detach().to(x_hat.dtype)
    return 0.5 * F.mse_loss(x_hat, target)


def flow_score_loss(v_pred: Tensor, x0: Tensor, eps: Tensor, weight: Tensor | None = None) -> Tensor:
    """Flow-matching velocity MSE ``|v - (eps - x0)|^2`` (mean): the fake-score net's denoising loss.

    Args:
        v_pred: (B, ...) the fake score's velocity at ``x_s = (1 - s) x0 + s eps``.
        x0, eps: (B, ...) its clean sample and noise.
        weight: (B,) per-sample weight (``edm_score_weight``); None weighs every sample 1.
    """
    if weight is None:
        return F.mse_loss(v_pred, eps - x0)
    return (append_dims(weight.to(v_pred.dtype), v_pred.ndim) * (v_pred - (eps - x0)).pow(2)).mean()


def edm_score_weight(s: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss weight ``1 / sigma^2 + 1 / sigma_data^2`` on the x0 error, moved onto the velocity error.

    With ``sigma = s / (1 - s)`` and ``x0_pred - x0 = -s (v_pred - v)``, the x0 loss
    ``(1 / sigma^2 + 1 / sigma_d^2) |x0_pred - x0|^2`` is ``((1 - s)^2 + s^2 / sigma_d^2) |v_pred - v|^2``
    exactly: DMD2's fake-score loss (``edm_guidance.py:152-161``); with sigma_d = 1 it is also rCM's
    critic loss ``|x0_pred - x0|^2 / sin^2 t`` (TrigFlow with sigma_d = 1). (B,) -> (B,).
    """
    return (1 - s) ** 2 + (s / sigma_data) ** 2


def karras_times(
    n: int = KARRAS_STEPS,
    sigma_min: float = KARRAS_SIGMA_MIN,
    sigma_max: float = KARRAS_SIGMA_MAX,
    rho: float = KARRAS_RHO,
) -> Tensor:
    """DMD2's noise table as FM times ``s = sigma / (1 + sigma)``, float64 (n,), index 0 the least noise.

    The same Karras sigmas as ``get_sigmas_karras`` flipped to small-first (``edm_guidance.py:9-15, 61-67``).
    """
    return karras_grid(n, sigma_min, sigma_max, rho)[:-1].flip(0)


def karras_index_range(min_fraction: float, max_fraction: float, n: int = KARRAS_STEPS) -> tuple[int, int]:
    """``[lo, hi)`` of the table indices DMD2 draws from for fractions of its n steps
    (``int(min n)`` .. ``int(max n)`` inclusive, capped at n - 1: ``edm_guidance.py:69-70, 82-84``)."""
    return int(min_fraction * n), min(int(max_fraction * n) + 1, n)
