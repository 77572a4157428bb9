"""Scores a set of samples against a dataset's held-out reference with the dataset's metric.

- digits: ``fd_digits``, the Frechet distance in the features of a small digits classifier,
  against the held-out split that no model trains on.
- Fashion-MNIST: ``fd_fmnist``, the same in the features of a CNN trained on its train split,
  against the test split (or the validation split while choosing defaults).
- 2-D sets: ``sw``, the sliced Wasserstein distance to fresh samples of the true distribution
  (also usable on flattened pixels, e.g. where no Inception weights are at hand).
- other images: ``fid`` with Inception features loaded from a local weights path, against the
  reference images or an EDM/ADM-style ``.npz`` of ``mu`` and ``sigma``.

Next to it, collapse metrics (class histogram, precision/recall) from the same features, so a
collapsing student shows in the dashboard before its Fréchet distance moves (docs/methods.md §12.2, §12.4).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from distill.metrics.coverage import class_histogram, coverage_from_histogram
from distill.metrics.digits_classifier import load_or_train_digits_classifier
from distill.metrics.features import (
    ClassifierFeatures,
    DigitsFeatures,
    InceptionFeatures,
    extract_features,
)
from distill.metrics.fmnist_classifier import load_or_train_fmnist_classifier
from distill.metrics.frechet import frechet_distance, gaussian_stats, load_npz_stats
from distill.metrics.precision_recall import knn_radii, precision_recall
from distill.metrics.sliced_wasserstein import sliced_wasserstein

# Rows logged next to the main metric, so mode collapse shows before the main metric moves.
COLLAPSE_METRICS = ("class_tv", "classes_covered", "recall", "precision")


class Scorer:
    """One main metric plus collapse metrics, with the reference side computed once.

    Collapse metrics (``collapse``): digits and Fashion-MNIST get ``class_tv`` and ``classes_covered``
    from their classifier's class histogram; every metric whose reference is held as features (digits and
    Inception features, 2-D points) gets ``recall`` and ``precision`` (k-NN manifolds, k = ``k``).
    Sets with at most ``k`` points, pixels under ``sw`` and Inception stats without reference
    images get none.

    Args:
        metric: ``fd_digits``, ``fd_fmnist``, ``sw`` or ``fid``.
        reference: reference samples (images in [-1, 1] or 2-D points).
        cache_dir: where the digits and Fashion-MNIST classifiers are cached.
        inception_weights: local path of torch-fidelity's Inception weights (``fid`` only).
        reference_stats: optional ``.npz`` with precomputed ``mu``/``sigma`` (``fid`` only).
            Given with ``fd_digits`` or ``fd_fmnist``, ``inception_weights`` adds ``fid`` to ``score_all``.
        k: neighbour rank of precision/recall.
        data_root: the Fashion-MNIST files, to train its classifier when it is not cached (``fd_fmnist``).
    """

    def __init__(
        self,
        metric: str,
        reference: Tensor | None,
        cache_dir: str | Path,
        inception_weights: str | None = None,
        reference_stats: str | None = None,
        progress: bool = False,
        k: int = 3,
        data_root: str | Path | None = None,
    ):
        self.metric = metric
        self.progress = progress
        self.reference = reference
        self.k = k
        self.ref_features: Tensor | None = None  # what precision/recall compares against
        if metric == "sw":
            self.extractor = None
            if reference is not None and reference.ndim == 2:  # points are their own features
                self.ref_features = reference.double()
        elif metric == "fd_digits":
            self.extractor = DigitsFeatures(load_or_train_digits_classifier(Path(cache_dir)))
        elif metric == "fd_fmnist":
            if data_root is None and not (Path(cache_dir) / "fmnist_classifier.safetensors").exists():
                raise ValueError("fd_fmnist trains its classifier on the Fashion-MNIST train split: pass data_root")
            classifier = load_or_train_fmnist_classifier(Path(cache_dir), Path(data_root or "."), progress=progress)
            self.extractor = ClassifierFeatures(classifier, (1, 28, 28))
        elif metric == "fid":
            self.extractor = InceptionFeatures(inception_weights)
        else:
            raise ValueError(f"eval metric {metric!r} is unknown; choose fd_digits, fd_fmnist, sw or fid")
        if self.extractor is not None:
            if reference is not None:
                self.ref_features = self._features(reference)
            if reference_stats:
                self.ref_stats = load_npz_stats(reference_stats)
            elif self.ref_features is not None:
                self.ref_stats = gaussian_stats(self.ref_features)
            else:
                raise ValueError("Frechet metrics need reference images or eval.reference_stats=<npz>")
        # A data set's own classifier is the main metric; with Inception weights at hand, FID comes too.
        self.inception: Scorer | None = None
        if metric in ("fd_digits", "fd_fmnist") and inception_weights and reference is not None:
            self.inception = Scorer("fid", reference, cache_dir, inception_weights, progress=progress, k=k)

    @cached_property
    def ref_radii(self) -> Tensor:
        """k-NN radii of the reference features: computed on first use, then reused."""
        return knn_radii(self.ref_features, self.k)

    def _features(self, samples: Tensor) -> Tensor:
        """What the metrics see: extractor features, or flattened samples for ``sw``."""
        if self.extractor is None:
            return samples.flatten(1)
        return extract_features(self.extractor, samples, progress=self.progress)

    def _main(self, features: Tensor) -> float:
        if self.metric == "sw":
            return sliced_wasserstein(features, self.reference.flatten(1))  # pixels for images
        return frechet_distance(*gaussian_stats(features), *self.ref_stats)

    def _collapse(self, features: Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        if isinstance(self.extractor, ClassifierFeatures):
            logits = self.extractor.logits(features)
            coverage = coverage_from_histogram(class_histogram(logits, logits.shape[1]))
            out.update(class_tv=coverage.tv_to_uniform, classes_covered=coverage.covered)
        ref = self.ref_features
        if ref is not None and min(len(ref), len(features)) > self.k:
            precision, recall = precision_recall(ref, features, self.k, real_radii=self.ref_radii)
            out.update(recall=recall, precision=precision)
        return out

    @torch.no_grad()
    def score_all(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The main metric first (keyed by ``self.metric``), then ``collapse``'s; features extracted once.
        With the classes the samples were asked for (``labels``), digits and Fashion-MNIST also get
        ``class_accuracy``: the share their classifier reads as the asked class."""
        features = self._features(samples)
        out = {self.metric: self._main(features), **self._collapse(features)}
        if self.inception is not None:
            out["fid"] = self.inception(samples)
        if labels is not None and isinstance(self.extractor, ClassifierFeatures):
            predicted = self.extractor.logits(features).argmax(dim=1).cpu()
            out["class_accuracy"] = (predicted == labels.cpu()).double().mean().item()
        return out

    @torch.no_grad()
    def collapse(self, samples: Tensor) -> dict[str, float]:
        """Collapse metrics only (names from ``COLLAPSE_METRICS``; see the class docstring)."""
        return self._collapse(self._features(samples))

    @torch.no_grad()
    def __call__(self, samples: Tensor) -> float:
        """The main metric only."""
        return self._main(self._features(samples))


def metric_for(kind: str, name: str) -> str:
    """The default metric of a dataset: 2-D sets -> sw, digits -> fd_digits, Fashion-MNIST -> fd_fmnist, else fid."""
    if kind == "2d":
        return "sw"
    return {"digits": "fd_digits", "fashion_mnist": "fd_fmnist"}.get(name, "fid")
