"""Mode coverage: does a generator produce every class / mode, in the right proportions?

Mode collapse in DMD/GAN-trained students shows up here before it moves a Fréchet distance
(docs/methods.md §12.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.core.gmm import GaussianMixture
from distill.metrics.features import extract_features


@dataclass(frozen=True)
class ModeCoverage:
    """Summary of how samples spread over K modes.

    Attributes:
        histogram: (K,) int64 sample counts per mode.
        tv_to_uniform: total-variation distance of the normalised histogram to uniform, in
            [0, 1 - 1/K]; 0 means perfectly balanced.
        covered: fraction of modes holding at least ``min_fraction`` of the samples.
    """

    histogram: Tensor
    tv_to_uniform: float
    covered: float


def class_histogram(logits_or_labels: Tensor, num_classes: int) -> Tensor:
    """Counts per class.

    Args:
        logits_or_labels: (N, num_classes) logits (argmax taken) or (N,) integer labels.
        num_classes: K.

    Returns:
        (K,) int64 counts summing to N.
    """
    x = logits_or_labels.detach().cpu()
    if x.ndim == 2:
        if x.shape[1] != num_classes:
            raise ValueError(f"logits have {x.shape[1]} columns but num_classes={num_classes}")
        x = x.argmax(1)
    elif x.ndim != 1 or x.is_floating_point():
        raise ValueError(f"expected (N, K) logits or (N,) integer labels, got {x.dtype} {tuple(x.shape)}")
    if len(x) and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"labels span {int(x.min())}..{int(x.max())}, outside 0..{num_classes - 1}")
    return torch.bincount(x.long(), minlength=num_classes)


def coverage_from_histogram(histogram: Tensor, min_fraction: float = 0.01) -> ModeCoverage:
    """``ModeCoverage`` of a (K,) count histogram (modes with >= ``min_fraction`` count as covered)."""
    total = int(histogram.sum())
    if total == 0:
        raise ValueError("the histogram is empty; coverage needs at least one sample")
    share = histogram.double() / total
    k = len(histogram)
    return ModeCoverage(
        histogram=histogram,
        tv_to_uniform=float(0.5 * (share - 1.0 / k).abs().sum()),
        covered=float((share >= min_fraction).double().mean()),
    )


@torch.no_grad()
def mode_coverage_digits(
    classifier: torch.nn.Module, images: Tensor, min_fraction: float = 0.01, batch_size: int = 500
) -> ModeCoverage:
    """Class coverage of generated digits as judged by the digits classifier.

    Args:
        classifier: maps (B, 1, 8, 8) images in [-1, 1] to (B, 10) logits.
        images: (N, 1, 8, 8) generated digits.
    """
    logits = extract_features(classifier.eval(), images, batch_size=batch_size)
    return coverage_from_histogram(class_histogram(logits, logits.shape[1]), min_fraction)


def classifier_score(logits: Tensor) -> float:
    """Inception-Score analogue ``exp(E_x KL(p(y|x) || p(y)))`` from (N, K) logits; in [1, K]."""
    log_p = torch.log_softmax(logits.detach().cpu().double(), dim=1)  # log p(y|x)
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(len(log_p))  # log p(y)
    kl = (log_p.exp() * (log_p - log_marginal)).sum(1)
    return float(kl.mean().exp())


def mode_coverage_gmm(
    samples: Tensor, mixture: GaussianMixture, min_fraction: float = 0.01, num_std: float = 3.0
) -> tuple[ModeCoverage, float]:
    """Mode coverage of 2-D samples against a Gaussian mixture.

    Each sample is assigned to its nearest component mean (Euclidean).

    Args:
        samples: (N, D) points.
        mixture: the target mixture (e.g. ``ring_mixture()``).
        num_std: a sample is "high quality" within ``num_std`` component stds of its mode.

    Returns:
        The coverage over components, and the fraction of high-quality samples.
    """
    x = samples.detach().cpu().double()
    means, stds = mixture.means.double(), mixture.stds.double()
    dist = torch.cdist(x, means)  # (N, K)
    nearest, mode = dist.min(dim=1)
    quality = float((nearest <= num_std * stds[mode]).double().mean())
    histogram = torch.bincount(mode, minlength=len(means))
    return coverage_from_histogram(histogram, min_fraction), quality
