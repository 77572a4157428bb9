"""The Scorer's main metric and its collapse rows, and the runner emitting one row per metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import distill.evaluation.scorer as scorer_module
from distill.core.gmm import ring_mixture
from distill.data.digits import load_digits_split
from distill.evaluation.runner import EvalSpec, evaluate_student
from distill.evaluation.scorer import COLLAPSE_METRICS, Scorer

DIGITS_KEYS = ["fd_digits", "class_tv", "classes_covered", "recall", "precision"]


@pytest.fixture(scope="module")
def digits_scorer(classifier_cache: Path) -> Scorer:
    return Scorer("fd_digits", load_digits_split("heldout")[0], classifier_cache)


def test_digits_reference_against_itself_is_perfect(digits_scorer: Scorer) -> None:
    reference = digits_scorer.reference
    scores = digits_scorer.score_all(reference)
    assert list(scores) == DIGITS_KEYS  # the main metric first
    assert abs(scores["fd_digits"]) < 1e-4
    assert scores["recall"] == scores["precision"] == 1.0
    assert scores["classes_covered"] == 1.0 and scores["class_tv"] < 0.05
    # __call__ (main metric only) and collapse() agree with score_all.
    assert digits_scorer(reference) == scores["fd_digits"]
    assert digits_scorer.collapse(reference) == {k: scores[k] for k in DIGITS_KEYS[1:]}
    assert set(COLLAPSE_METRICS) == set(DIGITS_KEYS[1:])


def test_digits_unseen_real_images_score_high_recall(digits_scorer: Scorer) -> None:
    images, _ = load_digits_split("train")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:540]
    scores = digits_scorer.score_all(images[pick])
    assert scores["recall"] > 0.85 and scores["precision"] > 0.85
    assert scores["classes_covered"] == 1.0 and scores["class_tv"] < 0.06
    assert 0.2 < scores["fd_digits"] < 5.0


def test_digits_collapsed_to_one_class_shows_in_every_collapse_metric(digits_scorer: Scorer) -> None:
    images, labels = load_digits_split("train")
    threes = images[labels == 3]  # 128 real 3s: faithful, but a tenth of the modes
    scores = digits_scorer.score_all(threes)
    assert scores["class_tv"] == pytest.approx(0.9, abs=0.03)  # 0.9 is all samples in one class
    assert scores["classes_covered"] == pytest.approx(0.1)
    assert scores["recall"] < 0.25 and scores["precision"] > 0.85
    assert scores["fd_digits"] > 100


def test_score_all_extracts_features_once(digits_scorer: Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor, calls = digits_scorer.extractor, []
    forward = extractor.forward
    monkeypatch.setattr(extractor, "forward", lambda x: calls.append(len(x)) or forward(x))
    digits_scorer.score_all(digits_scorer.reference)  # 540 images in batches of 500
    assert calls == [500, 40]


def test_points_get_recall_and_precision_pixels_and_tiny_sets_do_not(tmp_path: Path) -> None:
    mixture = ring_mixture()
    reference = mixture.sample(2000, generator=torch.Generator().manual_seed(0)).float()
    scorer = Scorer("sw", reference, tmp_path)
    samples = mixture.sample(500, generator=torch.Generator().manual_seed(1)).float()
    scores = scorer.score_all(samples)
    assert list(scores) == ["sw", "recall", "precision"]
    assert scores["recall"] > 0.9 and scores["precision"] > 0.9
    assert list(scorer.score_all(samples[:3])) == ["sw"]  # k = 3 needs at least 4 points
    pixels = Scorer("sw", torch.rand(20, 1, 8, 8) * 2 - 1, tmp_path)
    assert list(pixels.score_all(torch.rand(20, 1, 8, 8))) == ["sw"]
    assert scorer.collapse(samples[:3]) == {}


class OneModeMethod:
    """A stand-in method that puts every sample, at every NFE, near one mode of the ring."""

    name = "one_mode"

    def supported_nfes(self, nfes):
        return list(nfes)

    def sample(self, student, noise, nfe, renoise=None):
        return ring_mixture().means[0].float() + 0.05 * noise


def test_evaluate_student_emits_a_row_per_metric_and_collapse_shows(tmp_path: Path) -> None:
    reference = ring_mixture().sample(2000, generator=torch.Generator().manual_seed(0)).float()
    scorer = Scorer("sw", reference, tmp_path)
    spec = EvalSpec(num_samples=200, batch_size=100, student_nfes=(1, 2), progress=False)
    rows, _ = evaluate_student(OneModeMethod(), None, (2,), scorer, spec, step=5)
    assert [(r.nfe, r.metric) for r in rows] == [(n, m) for n in (1, 2) for m in ("sw", "recall", "precision")]
    assert {(r.model, r.sampler, r.step, r.num_samples) for r in rows} == {("student", "one_mode", 5, 200)}
    by_metric = {r.metric: r.value for r in rows if r.nfe == 1}
    assert by_metric["recall"] < 0.2 < 0.9 < by_metric["precision"]  # 1 of 8 modes, all on it


def test_inception_weights_add_fid_next_to_the_datasets_own_metric(
    classifier_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PooledPixels(torch.nn.Module):  # stands in for Inception: any (N, C, H, W) -> (N, D) extractor
        def __init__(self, weights_path) -> None:
            super().__init__()
            assert weights_path == "inception.pth"

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(images, 2).flatten(1)

    monkeypatch.setattr(scorer_module, "InceptionFeatures", PooledPixels)
    reference = load_digits_split("heldout")[0]
    samples = load_digits_split("train")[0][:300]
    scores = Scorer("fd_digits", reference, classifier_cache, inception_weights="inception.pth").score_all(samples)
    fid_alone = Scorer("fid", reference, classifier_cache, inception_weights="inception.pth")(samples)
    assert scores["fid"] == pytest.approx(fid_alone) and scores["fid"] > 0
    assert "fid" not in Scorer("fd_digits", reference, classifier_cache).score_all(samples)
