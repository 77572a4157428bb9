"""scikit-learn's bundled 8x8 digits (1797 images, no download): the tiny image benchmark.

The held-out split is the evaluation reference: no model (student, teacher, or the feature
classifier of ``distill.metrics.digits_classifier``) ever trains on it, so a Fréchet distance
against it measures generalisation, not memorisation. Keep ``seed`` and ``heldout_fraction`` at
their defaults everywhere, or the "held-out" images of one component are the training images of
another.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

DIGITS_SPLIT_SEED = 0
DIGITS_HELDOUT_FRACTION = 0.3
DIGITS_NUM_CLASSES = 10


def load_digits_split(
    split: Literal["train", "heldout"],
    heldout_fraction: float = DIGITS_HELDOUT_FRACTION,
    seed: int = DIGITS_SPLIT_SEED,
) -> tuple[Tensor, Tensor]:
    """One side of the fixed, class-stratified train / held-out split of the 8x8 digits.

    Args:
        split: ``"train"`` (1257 images at the defaults) or ``"heldout"`` (540 images).
        heldout_fraction: share of each class put in the held-out split.
        seed: ``random_state`` of the split; the default is the project-wide split.

    Returns:
        images: (n, 1, 8, 8) float32 in [-1, 1] (raw pixels 0..16 mapped by ``p / 8 - 1``).
        labels: (n,) int64 in 0..9.

    Raises:
        ValueError: unknown ``split``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}; choose 'train' or 'heldout'")
    bunch = load_digits()
    pixels = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    idx_train, idx_heldout = train_test_split(
        np.arange(len(pixels)),
        test_size=heldout_fraction,
        random_state=seed,
        stratify=bunch.target,
    )
    idx = np.sort(idx_train if split == "train" else idx_heldout)
    images = torch.from_numpy(pixels[idx] / 8.0 - 1.0)[:, None]
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return images, labels
