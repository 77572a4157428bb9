"""Fréchet distance between Gaussians fitted to features (FID when the features are Inception's).

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

``Tr (S1 S2)^{1/2}`` is computed as the sum of square roots of the eigenvalues of the symmetric
PSD matrix ``S1^{1/2} S2 S1^{1/2}`` (same spectrum as ``S1 S2``): real arithmetic, no complex
``sqrtm`` residue. Everything is float64 (docs/methods.md §12.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_f64(x: ArrayLike) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def gaussian_stats(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of a feature set.

    Args:
        features: (N, D), N >= 2.

    Returns:
        mu: (D,) float64. sigma: (D, D) float64, normalised by N - 1 (as numpy/EDM/torchmetrics).
    """
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(sigma: Tensor) -> Tensor:
    # Symmetrise first: accumulated covariances are symmetric only up to rounding.
    evals, evecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances (PSD).

    Returns:
        The distance as a Python float (>= 0 up to rounding), computed in float64.
    """
    mu1, sigma1, mu2, sigma2 = (_as_f64(v) for v in (mu1, sigma1, mu2, sigma2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, mu2 "
            f"{tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}; expected (D,) and (D, D) with one D"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def frechet_distance_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """``frechet_distance`` of the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def save_npz_stats(path: str | Path, mu: ArrayLike, sigma: ArrayLike) -> None:
    """Write EDM/ADM-style reference statistics: an .npz with float64 ``mu`` and ``sigma``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file handle keeps np.savez from appending ".npz"
        np.savez(f, mu=_as_f64(mu).numpy(), sigma=_as_f64(sigma).numpy())


def load_npz_stats(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read reference statistics from an EDM/ADM-style .npz (keys ``mu``, ``sigma``).

    Returns:
        mu: (D,) float64. sigma: (D, D) float64.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an .npz with ``mu`` and ``sigma`` of matching shapes.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"reference statistics {path} do not exist; compute them with save_npz_stats or "
            "copy the reference .npz (e.g. EDM's cifar10-32x32.npz) there"
        )
    try:
        data = np.load(path, allow_pickle=False)  # never unpickle downloaded files
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); recompute or re-copy it") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an .npz with 'mu' and 'sigma'; re-save it")
    with data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path} lacks key(s) {sorted(missing)} (has {sorted(data.files)}); reference "
                "statistics need 'mu' (D,) and 'sigma' (D, D), as EDM's fid.py writes them"
            )
        mu, sigma = data["mu"], data["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} must be (D,) and (D, D)")
    return _as_f64(mu), _as_f64(sigma)
