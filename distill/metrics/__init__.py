"""Evaluation metrics: Fréchet distance, sliced Wasserstein, feature extractors, mode coverage,
precision/recall.

Metrics are pure functions of features or samples; extractors map images in [-1, 1] to features.
"""

from distill.metrics.coverage import (
    ModeCoverage,
    class_histogram,
    classifier_score,
    coverage_from_histogram,
    mode_coverage_digits,
    mode_coverage_gmm,
)
from distill.metrics.digits_classifier import (
    DigitsClassifier,
    load_or_train_digits_classifier,
    train_digits_classifier,
)
from distill.metrics.features import DigitsFeatures, InceptionFeatures, extract_features
from distill.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    gaussian_stats,
    load_npz_stats,
    save_npz_stats,
)
from distill.metrics.precision_recall import knn_radii, precision_recall
from distill.metrics.sliced_wasserstein import sliced_wasserstein

__all__ = [
    "DigitsClassifier",
    "DigitsFeatures",
    "InceptionFeatures",
    "ModeCoverage",
    "class_histogram",
    "classifier_score",
    "coverage_from_histogram",
    "extract_features",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_stats",
    "knn_radii",
    "load_npz_stats",
    "load_or_train_digits_classifier",
    "mode_coverage_digits",
    "mode_coverage_gmm",
    "precision_recall",
    "save_npz_stats",
    "sliced_wasserstein",
    "train_digits_classifier",
]
