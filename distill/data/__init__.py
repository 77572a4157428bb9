"""Datasets (2-D toys, 8x8 digits, image folders, CIFAR-10, prompt lists) and the Lightning DataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distill.data.errors import DatasetError

if TYPE_CHECKING:
    from distill.data.datamodule import DATASET_NAMES, DataModule

__all__ = ["DATASET_NAMES", "DataModule", "DatasetError"]


def __getattr__(name: str) -> Any:
    # Lazy: importing Lightning costs seconds, and the metrics only need the plain loaders.
    if name in ("DataModule", "DATASET_NAMES"):
        from distill.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'distill.data' has no attribute {name!r}")
