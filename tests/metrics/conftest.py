"""One digits classifier per test session (trained once, ~3 s), cached in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.metrics.digits_classifier import DigitsClassifier, load_or_train_digits_classifier


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fixed folder of the session's temp root, so conftests importing this fixture load, not retrain.
    cache = tmp_path_factory.getbasetemp() / "digits_cache"
    load_or_train_digits_classifier(cache, progress=False)
    return cache


@pytest.fixture(scope="session")
def digits_classifier(classifier_cache: Path) -> DigitsClassifier:
    return load_or_train_digits_classifier(classifier_cache, progress=False)
