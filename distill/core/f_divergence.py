"""f-divergence weighting of the distribution-matching gradient (f-distill, docs/methods.md 5.5).

DMD's generator gradient ``mu_fake - mu_real`` minimises the reverse KL. Xu et al. (2025) show that
any f-divergence gives the same gradient scaled per sample by ``h(r) = f''(r) r^2``, where
``r = p_teacher / p_student`` at the noised sample. A GAN discriminator trained with the
non-saturating loss has the logit ``log r`` at its optimum, so its logit gives ``r``. ``h`` is then
normalised to mean 1 over the global batch, so the divergence changes where the generator learns,
not how fast (FastGen ``fastgen/methods/distribution_matching/f_distill.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distill.core.ranks import all_reduce_sum

F_WEIGHTINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "rkl": torch.ones_like,  # reverse KL: h = 1, plain DMD
    "kl": lambda r: r,  # forward KL: mass-covering
    "js": lambda r: 1 - 1 / (1 + r),  # Jensen-Shannon
    "sf": lambda r: 1 / (1 + r),  # softened reverse KL
    "neyman": lambda r: 1 / r.clamp(min=1e-8),  # Neyman chi^2
    "sh": lambda r: r.sqrt(),  # squared Hellinger
    "jf": lambda r: 1 + r,  # Jeffreys
}
LOGIT_LIMIT = 10.0  # the logit is clamped before exp, so the ratio stays finite in float32


def density_ratio(logits: Tensor, lower: float, upper: float) -> Tensor:
    """``r = exp(logit)`` per sample (B,), from the discriminator's logits (B, ...) averaged per
    sample, the logit clamped to +-10 and the ratio to ``[lower, upper]``; no gradient."""
    logit = logits.detach().float().flatten(1).mean(dim=1).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    return logit.exp().clamp(lower, upper)


def time_bin_normalised(ratio: Tensor, s: Tensor, bins: Tensor, ema_rate: float) -> Tensor:
    """``ratio`` divided by its running mean in its noise level's bin, and ``bins`` updated in place.

    The discriminator's calibration differs across noise levels, so each sample's ratio is
    compared with the ratios at its own level. ``bins`` (K,) holds the mean ratio of K equal bins of
    FM time [0, 1]; each bin a batch visits moves to ``ema_rate * old + (1 - ema_rate) * batch
    mean`` (FastGen's default rate 0: the batch mean), counted over every rank.
    """
    k = len(bins)
    index = (s.detach().double() * k).floor().long().clamp(0, k - 1)
    count = all_reduce_sum(torch.bincount(index, minlength=k).float())
    total = all_reduce_sum(torch.bincount(index, weights=ratio.float(), minlength=k).float())
    visited = count > 0
    updated = bins.float().clone()
    updated[visited] = ema_rate * updated[visited] + (1 - ema_rate) * (total / (count + 1e-6))[visited]
    bins.copy_(updated.to(bins.dtype))
    return ratio / (updated[index] + 1e-6)


def f_weight(ratio: Tensor, divergence: str) -> Tensor:
    """The per-sample scale ``h(r) / mean h`` of the DM gradient (mean over every rank's batch)."""
    h = F_WEIGHTINGS[divergence](ratio)
    total = all_reduce_sum(h.sum())
    count = all_reduce_sum(torch.tensor(float(len(h)), device=h.device))
    return h / (total / count + 1e-6)
