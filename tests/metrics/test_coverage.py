from __future__ import annotations

import pytest
import torch

from distill.core.gmm import ring_mixture
from distill.data.digits import load_digits_split
from distill.metrics.coverage import (
    class_histogram,
    classifier_score,
    coverage_from_histogram,
    mode_coverage_digits,
    mode_coverage_gmm,
)
from distill.metrics.digits_classifier import DigitsClassifier


def test_histogram_from_labels_and_logits() -> None:
    labels = torch.tensor([0, 2, 2, 3])
    assert class_histogram(labels, 4).tolist() == [1, 0, 2, 1]
    logits = torch.nn.functional.one_hot(labels, 4).float() * 5
    assert class_histogram(logits, 4).tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError, match="outside 0..3"):
        class_histogram(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="logits have 3 columns but num_classes=4"):
        class_histogram(torch.zeros(2, 3), 4)


def test_coverage_extremes_and_threshold() -> None:
    uniform = coverage_from_histogram(torch.full((10,), 50))
    assert uniform.tv_to_uniform == pytest.approx(0.0) and uniform.covered == 1.0
    collapsed = coverage_from_histogram(torch.tensor([100] + [0] * 9))
    assert collapsed.tv_to_uniform == pytest.approx(0.9) and collapsed.covered == pytest.approx(0.1)
    # 1 of 100 samples is exactly 1 %: covered; 0 is not.
    edge = coverage_from_histogram(torch.tensor([99, 1, 0, 0]))
    assert edge.covered == pytest.approx(0.5)
    with pytest.raises(ValueError, match="histogram is empty"):
        coverage_from_histogram(torch.zeros(3, dtype=torch.long))


def test_digits_coverage_on_real_and_collapsed_sets(digits_classifier: DigitsClassifier) -> None:
    images, labels = load_digits_split("heldout")
    real = mode_coverage_digits(digits_classifier, images)
    assert real.covered == 1.0 and real.tv_to_uniform < 0.05 and int(real.histogram.sum()) == 540
    zeros = mode_coverage_digits(digits_classifier, images[labels == 0])
    assert zeros.covered <= 0.2 and zeros.tv_to_uniform > 0.8


def test_classifier_score_bounds() -> None:
    assert classifier_score(torch.zeros(50, 10)) == pytest.approx(1.0)
    confident = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).float() * 50
    assert classifier_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert classifier_score(confident[:10]) == pytest.approx(10.0, rel=1e-6)
    assert classifier_score(
        torch.nn.functional.one_hot(torch.zeros(20, dtype=torch.long), 10).float() * 50
    ) == pytest.approx(1.0)


def test_gmm_coverage_and_quality() -> None:
    mixture = ring_mixture()
    x = mixture.sample(20_000, generator=torch.Generator().manual_seed(0))
    cov, quality = mode_coverage_gmm(x, mixture)
    assert cov.covered == 1.0 and cov.tv_to_uniform < 0.02
    # In 2-D, P(|eps| <= 3) for a standard normal is 1 - exp(-4.5) = 0.9889.
    assert quality == pytest.approx(0.9889, abs=0.005)
    one_mode = mixture.means[3] + 0.1 * torch.randn(500, 2, dtype=torch.float64)
    cov, _ = mode_coverage_gmm(one_mode, mixture)
    assert cov.covered == pytest.approx(1 / 8) and cov.histogram[3] == 500
