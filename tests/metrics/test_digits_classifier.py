from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill.metrics.digits_classifier as dc
from distill.data.digits import load_digits_split


def test_cached_classifier_reaches_95_percent_on_heldout(
    classifier_cache: Path, digits_classifier: dc.DigitsClassifier
) -> None:
    meta = json.loads((classifier_cache / dc.META_FILE).read_text())
    assert meta["heldout_accuracy"] >= 0.95 and meta["epochs"] == dc.DEFAULT_EPOCHS
    assert meta["trained_on"].startswith("digits train split")
    assert dc.accuracy(digits_classifier, *load_digits_split("heldout")) == pytest.approx(meta["heldout_accuracy"])


def test_shapes_and_frozen(digits_classifier: dc.DigitsClassifier) -> None:
    x = load_digits_split("heldout")[0][:7]
    assert digits_classifier.features(x).shape == (7, 64)
    assert digits_classifier(x).shape == (7, 10)
    assert not digits_classifier.training
    assert not any(p.requires_grad for p in digits_classifier.parameters())


def test_cache_is_safetensors_and_reused(
    classifier_cache: Path, digits_classifier: dc.DigitsClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = load_file(str(classifier_cache / dc.WEIGHTS_FILE))
    assert set(state) == set(digits_classifier.state_dict())

    def _no_training(**_: object) -> None:
        raise AssertionError("a valid cache must not retrain")

    monkeypatch.setattr(dc, "train_digits_classifier", _no_training)
    again = dc.load_or_train_digits_classifier(classifier_cache)
    x = load_digits_split("heldout")[0][:16]
    assert torch.equal(again(x), digits_classifier(x))


def test_corrupt_cache_warns_and_retrains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / dc.WEIGHTS_FILE).write_bytes(b"\x00garbage")
    (tmp_path / dc.META_FILE).write_text("{}")
    calls: list[int] = []

    def _quick(seed: int = 0, epochs: int = 1, progress: bool = True) -> dc.DigitsClassifier:
        calls.append(seed)
        return dc.DigitsClassifier().eval()

    monkeypatch.setattr(dc, "train_digits_classifier", _quick)
    with pytest.warns(UserWarning, match="is unreadable .*retraining it"):
        dc.load_or_train_digits_classifier(tmp_path, progress=False)
    assert calls == [0]
    assert set(load_file(str(tmp_path / dc.WEIGHTS_FILE))) == set(dc.DigitsClassifier().state_dict())
    assert "heldout_accuracy" in json.loads((tmp_path / dc.META_FILE).read_text())


def test_loading_the_cache_spares_global_rng(classifier_cache: Path) -> None:
    # A run that finds the classifier cached must draw the same random numbers as one that trains
    # it: otherwise a distillation run's result depends on the state of the cache.
    state = torch.random.get_rng_state()
    dc.load_or_train_digits_classifier(classifier_cache)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_training_is_seeded_touches_only_train_split_and_spares_global_rng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[str] = []
    real = dc.load_digits_split

    def _spy(split: str, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        requested.append(split)
        return real(split, **kwargs)

    monkeypatch.setattr(dc, "load_digits_split", _spy)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a = dc.train_digits_classifier(seed=1, epochs=1, progress=False)
    b = dc.train_digits_classifier(seed=1, epochs=1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    assert requested == ["train", "train"]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
