"""Distribution matching (DMD / DMD2, methods.md 5.1-5.2) as pure functions of denoised estimates.

The generator's sample x_hat is noised to x_s; the real (teacher) and fake (trained on the
generator's own samples) denoisers disagree about where x_s came from, and their difference is the
gradient of KL(p_fake || p_real) with respect to x_hat. The loss below has exactly that gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.tensors import append_dims


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


def flow_score_loss(v_pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching velocity MSE ``|v - (eps - x0)|^2`` (mean): the fake-score net's denoising loss."""
    return F.mse_loss(v_pred, eps - x0)
