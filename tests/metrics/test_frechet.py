from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import _compute_fid

from distill.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    gaussian_stats,
    load_npz_stats,
    save_npz_stats,
)


def _features(seed: int, n: int = 400, d: int = 16, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64)  # correlated features
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix + shift


def test_gaussian_stats_match_numpy() -> None:
    f = _features(0)
    mu, sigma = gaussian_stats(f.float())
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == (16,) and sigma.shape == (16, 16)
    np.testing.assert_allclose(mu.numpy(), f.float().double().numpy().mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.float().double().numpy(), rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(torch.zeros(1, 4))


def test_matches_torchmetrics_fid() -> None:
    s1, s2 = gaussian_stats(_features(1)), gaussian_stats(_features(2, shift=0.3))
    ours = frechet_distance(*s1, *s2)
    theirs = _compute_fid(s1[0], s1[1], s2[0], s2[1]).item()
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-8)


def test_matches_scipy_sqrtm_formula() -> None:
    (m1, c1), (m2, c2) = gaussian_stats(_features(3)), gaussian_stats(_features(4))
    c1n, c2n = c1.numpy(), c2.numpy()
    covmean = scipy.linalg.sqrtm(c1n @ c2n).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(c1n) + np.trace(c2n) - 2 * np.trace(covmean))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-8)


def test_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())  # 7.25 + 4 + 1
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(12.25)


def test_zero_for_identical_and_symmetric() -> None:
    f, g = _features(5), _features(6, shift=1.0)
    assert abs(frechet_distance_from_features(f, f)) < 1e-8
    assert frechet_distance_from_features(f, g) == pytest.approx(frechet_distance_from_features(g, f), rel=1e-9)
    # Singular (rank-deficient) covariances stay finite and non-negative.
    low_rank = torch.cat([f[:, :2], torch.zeros(len(f), 14, dtype=torch.float64)], 1)
    assert frechet_distance_from_features(low_rank, low_rank) == pytest.approx(0.0, abs=1e-8)


def test_shape_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


def test_npz_round_trip_in_edm_format(tmp_path: Path) -> None:
    mu, sigma = gaussian_stats(_features(7))
    path = tmp_path / "ref" / "stats.npz"
    save_npz_stats(path, mu, sigma)
    with np.load(path) as raw:  # what EDM's fid.py reads
        assert set(raw.files) == {"mu", "sigma"} and raw["sigma"].dtype == np.float64
    mu2, sigma2 = load_npz_stats(path)
    assert torch.equal(mu, mu2) and torch.equal(sigma, sigma2)


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz do not exist"):
        load_npz_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['sigma'\]"):
        load_npz_stats(tmp_path / "nosigma.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz_stats(tmp_path / "single.npy")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"mu": 1}))
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz_stats(tmp_path / "pickle.npz")
    np.savez(tmp_path / "objects.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError):  # object arrays would need pickle: refused
        load_npz_stats(tmp_path / "objects.npz")
