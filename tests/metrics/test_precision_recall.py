from __future__ import annotations

import pytest
import torch

from distill.metrics.precision_recall import knn_radii, precision_recall


def clusters(n_per: int, centers: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = 0.1 * torch.randn(len(centers), n_per, centers.shape[1], generator=gen, dtype=torch.float64)
    return (centers[:, None] + noise).reshape(-1, centers.shape[1])


CENTERS = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], dtype=torch.float64)


def test_knn_radii_match_brute_force_and_do_not_depend_on_chunking() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    brute = torch.cdist(x, x).sort(dim=1).values[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, k=3), brute)
    torch.testing.assert_close(knn_radii(x, k=3, chunk_elements=7), brute)


def test_hand_computed_example_on_a_line() -> None:
    # k = 1: every real point has radius 1; fake radii are 2, 2, 0.5, 0.5.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [2.5], [9.0], [9.5]])
    # Half the fakes lie within 1 of a real point; the two fakes near the middle cover every real.
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_identical_sets_score_one_and_one() -> None:
    x = clusters(100, CENTERS, seed=0)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


def test_fake_collapsed_to_one_cluster_has_precision_but_no_recall() -> None:
    real = clusters(250, CENTERS, seed=0)
    collapsed = clusters(1000, CENTERS[:1], seed=1)
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision > 0.9
    assert 0.2 < recall <= 0.25 + 1e-9  # at most the one cluster's quarter of the real points
    # Same answer with tiny chunks and with cached real radii.
    assert precision_recall(real, collapsed, k=3, chunk_elements=100) == (precision, recall)
    assert precision_recall(real, collapsed, real_radii=knn_radii(real, 3)) == (precision, recall)


def test_far_away_fake_set_scores_zero_and_zero() -> None:
    real = clusters(50, CENTERS, seed=0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_bad_arguments_raise() -> None:
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="k=0 needs 1 <= k < N"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="fake_features has N=3"):
        precision_recall(x, x[:3], k=3)
    with pytest.raises(ValueError, match="feature dims differ"):
        precision_recall(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="real_radii has shape"):
        precision_recall(x, x, real_radii=torch.ones(9))
    with pytest.raises(ValueError, match=r"\(N, D\) features"):
        knn_radii(torch.randn(10))
