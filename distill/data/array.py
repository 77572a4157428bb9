"""A user's data set as one array file: ``dataset=array dataset.path=<file.npy|.npz>``.

Accepted contents: images (N, H, W) or (N, H, W, C) with C in {1, 3}, as uint8 (0..255) or floats
(in [0, 1] or [-1, 1]); or points (N, D). An ``.npz`` holds the data under ``x`` (or ``images`` /
``data``) and optional int labels under ``y`` (or ``labels``); an ``.npy`` holds the data alone.

The split discipline of the benchmarks applies: a seeded ``validation_fraction`` of the rows is
carved out as the validation split, which never trains and is what evaluation scores against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from distill.data.errors import DatasetError

DATA_KEYS = ("x", "images", "data")
LABEL_KEYS = ("y", "labels")
SPLIT_SEED = 0  # fixed: the validation rows must be the same for every model that reads the file


def read_array_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(data, labels or None) from an ``.npy`` or ``.npz``; pickled objects are refused.

    Raises:
        DatasetError: missing file, unknown suffix, no data key, or labels that do not match.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"dataset.path={path} does not exist; point it at an .npy or .npz file")
    if path.suffix not in (".npy", ".npz"):
        raise DatasetError(f"dataset.path={path} is not .npy or .npz; save the array with np.save or np.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(
            f"dataset.path={path} is unreadable ({err}); save plain arrays with np.save / np.savez "
            "(object arrays are refused: they would run code on load)"
        ) from err
    if path.suffix == ".npy":
        return loaded, None
    with loaded:
        data_key = next((k for k in DATA_KEYS if k in loaded.files), None)
        if data_key is None:
            raise DatasetError(
                f"dataset.path={path} holds {loaded.files}; store the data under one of "
                f"{', '.join(DATA_KEYS)} (labels, optional, under y or labels)"
            )
        label_key = next((k for k in LABEL_KEYS if k in loaded.files), None)
        data = loaded[data_key]
        labels = None if label_key is None else loaded[label_key]
    if labels is not None and (
        labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
    ):
        raise DatasetError(
            f"dataset.path={path}: labels must be N={len(data)} non-negative integers, got "
            f"{labels.dtype} of shape {labels.shape}"
        )
    return data, labels


def to_model_space(data: np.ndarray) -> Tensor:
    """Images -> (N, C, H, W) float32 in [-1, 1]; points (N, D) -> float32 unchanged.

    Raises:
        DatasetError: a shape that is neither, or float images outside [-1, 1].
    """
    if data.ndim == 2:
        return torch.from_numpy(data.astype(np.float32))
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[-1] not in (1, 3):
        raise DatasetError(
            f"array of shape {data.shape}: expected images (N, H, W) or (N, H, W, C) with C = 1 or 3, or points (N, D)"
        )
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    if data.dtype == np.uint8:
        return images.float().div_(127.5).sub_(1.0)
    images = images.float()
    low, high = images.min().item(), images.max().item()
    if low >= 0.0 and high <= 1.0:  # [0, 1] images (the usual float convention) are rescaled
        return images.mul_(2.0).sub_(1.0)
    if low < -1.0 or high > 1.0:
        raise DatasetError(
            f"float images span [{low:.3g}, {high:.3g}]; give uint8 0..255 or floats in [0, 1] or [-1, 1]"
        )
    return images


def validation_rows(n: int, fraction: float) -> Tensor:
    """Sorted indices of the validation rows: a fixed seeded share ``fraction`` of ``n`` (at least one)."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"dataset.validation_fraction={fraction}; choose a share in (0, 1)")
    count = max(1, round(n * fraction))
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    return torch.randperm(n, generator=gen)[:count].sort().values


def load_array_split(
    path: str | Path, split: Literal["train", "validation"], validation_fraction: float = 0.1
) -> tuple[Tensor, Tensor]:
    """One split of an array file: (data in model space, int64 labels; zeros when the file has none)."""
    if split not in ("train", "validation"):
        raise DatasetError(f"split={split!r}: an array data set has train and validation splits only")
    data, labels = read_array_file(path)
    if len(data) < 2:
        raise DatasetError(f"dataset.path={path} holds {len(data)} rows; a train and a validation split need two")
    x = to_model_space(data)
    y = torch.zeros(len(x), dtype=torch.int64) if labels is None else torch.from_numpy(labels.astype(np.int64))
    held = torch.zeros(len(x), dtype=torch.bool)
    held[validation_rows(len(x), validation_fraction)] = True
    keep = held if split == "validation" else ~held
    return x[keep], y[keep]


def array_num_classes(path: str | Path) -> int:
    """Classes of an array file's labels (max + 1), 0 without labels."""
    labels = read_array_file(path)[1]
    return 0 if labels is None else int(labels.max()) + 1
