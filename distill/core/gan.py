"""Adversarial losses and the R1 penalty (docs/methods.md section 11), as pure functions of logits.

Every loss takes the logits of one head, a tensor of any shape (per-sample ``(B,)`` or
per-location ``(B, H, W)``), or a sequence of such tensors for multi-head discriminators, and
returns a scalar: the mean over every logit of a head, then the mean over heads (PCM divides by
the number of heads). Losses are to be *minimised*, by D and by G alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Logits = Tensor | Sequence[Tensor]


def _heads(logits: Logits) -> list[Tensor]:
    heads = [logits] if isinstance(logits, Tensor) else list(logits)
    if not heads:
        raise ValueError("a discriminator must give at least one head of logits")
    return heads


def average_heads(per_head: Callable[..., Tensor], *logits: Logits) -> Tensor:
    """``mean_k per_head(logits_1[k], logits_2[k], ...)`` over the heads k (paired across arguments)."""
    columns = [_heads(lg) for lg in logits]
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"head counts differ between arguments: {[len(c) for c in columns]}")
    return torch.stack([per_head(*row) for row in zip(*columns, strict=True)]).mean()


def ns_d_loss(real: Logits, fake: Logits) -> Tensor:
    """Non-saturating D loss ``softplus(-l_real) + softplus(l_fake)`` (DMD2, GDD)."""
    return average_heads(lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(), real, fake)


def ns_g_loss(fake: Logits) -> Tensor:
    """Non-saturating G loss ``softplus(-l_fake)``."""
    return average_heads(lambda f: F.softplus(-f).mean(), fake)


def hinge_d_loss(real: Logits, fake: Logits) -> Tensor:
    """Hinge D loss ``relu(1 - l_real) + relu(1 + l_fake)``."""
    return average_heads(lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), real, fake)


def hinge_g_loss(fake: Logits) -> Tensor:
    """Standard hinge G loss ``-l_fake``."""
    return average_heads(lambda f: -f.mean(), fake)


def hinge_g_loss_pcm(fake: Logits) -> Tensor:
    """PCM's hinge G loss ``relu(1 - l_fake)``: no push once D calls the fake real with margin 1."""
    return average_heads(lambda f: F.relu(1 - f).mean(), fake)


def r1_penalty(real_x: Tensor, real_logits: Logits, gamma: float, heads_reduction: str = "mean") -> Tensor:
    """``gamma / 2 * E ||grad_x D(x_real)||^2``, differentiable (``create_graph``) for D's update.

    ``D(x)`` of one sample is the sum of its logits (all locations), averaged over heads (``sum``:
    summed, as GDD's ``training/loss.py:303``); samples are independent, so the gradient of the
    batch sum is every sample's own gradient.

    Args:
        real_x: (B, ...) the real input, with ``requires_grad`` set before D was applied.
        real_logits: D's logits on ``real_x``.
        gamma: R1 weight (GDD: 1e-4).
        heads_reduction: ``mean`` or ``sum`` over heads.
    """
    if heads_reduction not in ("mean", "sum"):
        raise ValueError(f"heads_reduction={heads_reduction!r}; choose mean or sum")
    heads = _heads(real_logits)
    sums = torch.stack([h.sum() for h in heads])
    total = sums.sum() if heads_reduction == "sum" else sums.mean()
    (grad,) = torch.autograd.grad(total, real_x, create_graph=True)
    return 0.5 * gamma * grad.pow(2).reshape(grad.shape[0], -1).sum(dim=1).mean()


def approximate_r1(real: Logits, shaken: Logits) -> Tensor:
    """APT's approximate R1 (FastGen ``LADDModel._compute_r1_regularization``): the mean squared
    difference between the logits of real inputs and of the same inputs perturbed by small noise,
    averaged over heads. A penalty on D's local slope that needs no gradient of a gradient."""
    return average_heads(F.mse_loss, real, shaken)


def mean_probability(logits: Logits) -> Tensor:
    """Mean ``sigmoid(logit)`` over every logit, averaged over heads, detached: the D(real) / D(fake)
    that DMD2 logs (near 1 and 0 means D wins outright: its lr or weight is too high)."""
    return torch.stack([torch.sigmoid(h).mean() for h in _heads(logits)]).mean().detach()


D_LOSSES: dict[str, Callable[[Logits, Logits], Tensor]] = {"ns": ns_d_loss, "hinge": hinge_d_loss}
G_LOSSES: dict[str, Callable[[Logits], Tensor]] = {
    "ns": ns_g_loss,
    "hinge": hinge_g_loss,
    "hinge_pcm": hinge_g_loss_pcm,
}
