from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from distill.data.digits import load_digits_split


def test_split_sizes_ranges_and_dtypes() -> None:
    x_tr, y_tr = load_digits_split("train")
    x_ho, y_ho = load_digits_split("heldout")
    assert x_tr.shape == (1257, 1, 8, 8) and x_ho.shape == (540, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.min() == -1 and x_tr.max() == 1
    # pixel / 8 - 1 of integers 0..16
    k = (x_ho + 1) * 8
    assert torch.equal(k, k.round()) and set(y_ho.tolist()) == set(range(10))


def _pixel_rows(x: torch.Tensor) -> Counter[bytes]:
    """Multiset of images as raw 0..16 pixel bytes (undoing pixel / 8 - 1)."""
    pixels = ((x[:, 0] + 1) * 8).round().to(torch.uint8).reshape(len(x), 64).numpy()
    return Counter(row.tobytes() for row in pixels)


def test_splits_partition_the_dataset_and_are_stratified() -> None:
    x_tr, y_tr = load_digits_split("train")
    x_ho, y_ho = load_digits_split("heldout")
    full = load_digits()
    assert _pixel_rows(x_tr) + _pixel_rows(x_ho) == Counter(
        r.tobytes() for r in full.images.astype(np.uint8).reshape(-1, 64)
    )
    share = torch.bincount(y_ho, minlength=10) / (
        torch.bincount(y_tr, minlength=10) + torch.bincount(y_ho, minlength=10)
    )
    assert torch.allclose(share.double(), torch.full((10,), 0.3, dtype=torch.float64), atol=0.02)


def test_split_is_fixed() -> None:
    a, _ = load_digits_split("heldout")
    b, _ = load_digits_split("heldout")
    c, _ = load_digits_split("heldout", seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="split='test'; choose 'train' or 'heldout'"):
        load_digits_split("test")  # type: ignore[arg-type]
