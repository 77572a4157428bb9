"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds of two feature sets.

A set's manifold is the union of balls around its points, each of radius the distance to that
point's k-th nearest neighbour in the same set (k = 3 in the paper). Precision is the fraction of
fake features inside the real manifold (fidelity); recall the fraction of real features inside the
fake manifold (coverage). A collapsed generator keeps its precision and loses recall, often before
a Fréchet distance moves (docs/methods.md §12.2).

Distances are computed in float64, in row chunks, so 10k x 10k sets never hold the full matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Distance-matrix entries per chunk: 2**24 float64 values are 128 MiB.
CHUNK_ELEMENTS = 2**24


def _rows_per_chunk(num_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, num_cols))


def _check_k(features: Tensor, k: int, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {tuple(features.shape)}")
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} needs 1 <= k < N, but {name} has N={len(features)} points")


def knn_radii(features: Tensor, k: int = 3, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded).

    Args:
        features: (N, D) points; computed in float64 on their device.
        k: neighbour rank, 1 <= k < N.

    Returns:
        (N,) float64 radii.
    """
    _check_k(features, k, "features")
    x = features.double()
    step = _rows_per_chunk(len(x), chunk_elements)
    # The k+1 smallest distances of a row include the point itself (0): index k is the k-th neighbour.
    return torch.cat(
        [torch.cdist(x[i : i + step], x).topk(k + 1, dim=1, largest=False).values[:, k] for i in range(0, len(x), step)]
    )


def precision_recall(
    real_features: Tensor,
    fake_features: Tensor,
    k: int = 3,
    real_radii: Tensor | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[float, float]:
    """Improved precision and recall of ``fake_features`` against ``real_features``.

    Args:
        real_features: (N, D) reference features.
        fake_features: (M, D) generated features (moved to the reference's device).
        k: neighbour rank of the manifold radii, 1 <= k < min(N, M).
        real_radii: optional cached ``knn_radii(real_features, k)``: the reference side of an
            evaluation repeated over many sample sets.

    Returns:
        (precision, recall), each in [0, 1].
    """
    _check_k(real_features, k, "real_features")
    _check_k(fake_features, k, "fake_features")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"feature dims differ: real {real_features.shape[1]} vs fake {fake_features.shape[1]}")
    real = real_features.double()
    fake = fake_features.to(real.device, torch.float64)
    r_real = knn_radii(real, k, chunk_elements) if real_radii is None else real_radii.to(real)
    if r_real.shape != (len(real),):
        raise ValueError(f"real_radii has shape {tuple(r_real.shape)}, expected ({len(real)},)")
    r_fake = knn_radii(fake, k, chunk_elements)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    step = _rows_per_chunk(len(real), chunk_elements)
    for i in range(0, len(fake), step):  # one pass over the cross distances serves both directions
        d = torch.cdist(fake[i : i + step], real)  # (chunk, N)
        fake_in_real[i : i + step] = (d <= r_real[None, :]).any(1)
        real_in_fake |= (d <= r_fake[i : i + step, None]).any(0)
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())
