"""Fake Fashion-MNIST files for the tests: the IDX format written independently of the reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

import distill.data.fashion_mnist as fm


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding written independently of the reader: magic 00 00 08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(folder: Path, n_train: int, n_test: int, gz: bool = True) -> None:
    """Four IDX files whose image i carries i in its first two pixels (i % 256, i // 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    for is_train, n in ((True, n_train), (False, n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        index = np.arange(n)
        images[:, 0, 0], images[:, 0, 1] = index % 256, index // 256
        write_idx(folder / fm.FILES[("images", is_train)], images, gz)
        write_idx(folder / fm.FILES[("labels", is_train)], (index % 10).astype(np.uint8), gz)


def encoded_index(images: torch.Tensor) -> torch.Tensor:
    pixels = ((images[:, 0, 0, :2] + 1) * 127.5).round().long()
    return pixels[:, 0] + 256 * pixels[:, 1]
