"""Scores a set of samples against a dataset's held-out reference with the dataset's metric.

- digits: ``fd_digits``, the Frechet distance in the features of a small digits classifier,
  against the held-out split that no model trains on.
- 2-D sets: ``sw``, the sliced Wasserstein distance to fresh samples of the true distribution
  (also usable on flattened pixels, e.g. where no Inception weights are at hand).
- other images: ``fid`` with Inception features loaded from a local weights path, against the
  reference images or an EDM/ADM-style ``.npz`` of ``mu`` and ``sigma``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from distill.metrics.digits_classifier import load_or_train_digits_classifier
from distill.metrics.features import DigitsFeatures, InceptionFeatures, extract_features
from distill.metrics.frechet import frechet_distance, gaussian_stats, load_npz_stats
from distill.metrics.sliced_wasserstein import sliced_wasserstein


class Scorer:
    """One metric, with the reference side computed once.

    Args:
        metric: ``fd_digits``, ``sw`` or ``fid``.
        reference: reference samples (images in [-1, 1] or 2-D points).
        cache_dir: where the digits classifier is cached.
        inception_weights: local path of torch-fidelity's Inception weights (``fid`` only).
        reference_stats: optional ``.npz`` with precomputed ``mu``/``sigma`` (``fid`` only).
    """

    def __init__(
        self,
        metric: str,
        reference: Tensor | None,
        cache_dir: str | Path,
        inception_weights: str | None = None,
        reference_stats: str | None = None,
        progress: bool = False,
    ):
        self.metric = metric
        self.progress = progress
        self.reference = reference
        if metric == "sw":
            self.extractor = None
        elif metric == "fd_digits":
            self.extractor = DigitsFeatures(load_or_train_digits_classifier(Path(cache_dir)))
        elif metric == "fid":
            self.extractor = InceptionFeatures(inception_weights)
        else:
            raise ValueError(f"eval metric {metric!r} is unknown; choose fd_digits, sw or fid")
        if self.extractor is not None:
            if reference_stats:
                self.ref_stats = load_npz_stats(reference_stats)
            elif reference is not None:
                self.ref_stats = gaussian_stats(self._features(reference))
            else:
                raise ValueError("Frechet metrics need reference images or eval.reference_stats=<npz>")

    def _features(self, images: Tensor) -> Tensor:
        return extract_features(self.extractor, images, progress=self.progress)

    @torch.no_grad()
    def __call__(self, samples: Tensor) -> float:
        if self.metric == "sw":
            return sliced_wasserstein(samples.flatten(1), self.reference.flatten(1))  # pixels for images
        mu, sigma = gaussian_stats(self._features(samples))
        return frechet_distance(mu, sigma, *self.ref_stats)


def metric_for(kind: str, name: str) -> str:
    """The default metric of a dataset: 2-D sets -> sw, digits -> fd_digits, else fid."""
    if kind == "2d":
        return "sw"
    return "fd_digits" if name == "digits" else "fid"
