"""fd_fmnist's classifier: trained on the train split only, cached with its record, retrained when unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import distill.data.fashion_mnist as fm
import distill.metrics.fmnist_classifier as fc
from distill.metrics.digits_classifier import accuracy
from tests.helpers.fashion_mnist import write_fashion_mnist


def test_trains_on_the_train_split_caches_and_loads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path / "data", n_train=200, n_test=40)
    seen = []
    train = fc.train_fmnist_classifier
    monkeypatch.setattr(
        fc,
        "train_fmnist_classifier",
        lambda images, labels, **kw: seen.append(len(images)) or train(images, labels, **{**kw, "epochs": 1}),
    )
    model = fc.load_or_train_fmnist_classifier(tmp_path / "cache", tmp_path / "data", progress=False)
    assert seen == [200]  # all 200 fake training images are the train split (fewer than 55,000)
    record = json.loads((tmp_path / "cache" / fc.META_FILE).read_text())
    assert record["validation_accuracy"] is None and 0.0 <= record["test_accuracy"] <= 1.0
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    again = fc.load_or_train_fmnist_classifier(tmp_path / "cache", tmp_path / "nowhere", progress=False)
    assert seen == [200]  # loaded, not retrained (the data root is not even read)
    torch.testing.assert_close(again.features(x), model.features(x))
    assert again.features(x).shape == (5, fc.FEATURE_DIM) and again(x).shape == (5, 10)


def test_unreadable_cache_is_retrained_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path / "data", n_train=64, n_test=8)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / fc.WEIGHTS_FILE).write_bytes(b"not safetensors")
    train = fc.train_fmnist_classifier
    monkeypatch.setattr(
        fc, "train_fmnist_classifier", lambda images, labels, **kw: train(images, labels, **{**kw, "epochs": 1})
    )
    with pytest.warns(UserWarning, match="unreadable.*retraining"):
        fc.load_or_train_fmnist_classifier(tmp_path / "cache", tmp_path / "data", progress=False)
    assert "test_accuracy" in fc.load_fmnist_classifier(tmp_path / "cache")[1]  # the new cache loads


@pytest.mark.skipif(not fm.has_files(fm.DEBIAN_ROOT), reason="Fashion-MNIST is not installed (make data)")
def test_committed_classifier_scores_the_test_split_as_its_record_says() -> None:
    folder = Path(__file__).parents[2] / "experiments" / "weights"
    model, record = fc.load_fmnist_classifier(folder)
    test_accuracy = accuracy(model, *fm.load_fashion_mnist(fm.DEBIAN_ROOT, "test"))
    assert test_accuracy == pytest.approx(record["test_accuracy"], abs=1e-4) and test_accuracy >= 0.93
