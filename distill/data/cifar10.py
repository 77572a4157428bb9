"""CIFAR-10 from the standard python pickles (``cifar-10-python.tar.gz``), as tensors in [-1, 1].

torchvision's ``CIFAR10`` class downloads the archive (``download=True``), and its file list
defines the layout. Reading goes through ``read_cifar_batch`` below rather than the class, because
the class MD5-checks every file on every construction: that rules out any local stand-in (the
tests use a tiny fake folder in the same format). ``verify_checksums=True`` restores the check.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from distill.data.errors import DatasetError

CIFAR10_NUM_CLASSES = 10


def cifar10_files(train: bool) -> list[tuple[str, str]]:
    """``(file name, md5)`` of the batches of one split, as torchvision lays them out."""
    return [tuple(entry) for entry in (CIFAR10.train_list if train else CIFAR10.test_list)]


def _layout(root: Path) -> str:
    return f"{root}/{CIFAR10.base_folder}/{{data_batch_1..5,test_batch,{CIFAR10.meta['filename']}}}"


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays and nothing else: a pickle can name any callable
    to run on load, and a dataset folder is user input."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    }  # the last: bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch and is not loaded")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 images (n, 3, 32, 32), int64 labels (n,)).

    Raises:
        DatasetError: the file is not a CIFAR-10 python batch.
    """
    try:
        with open(path, "rb") as f:
            entry = ArraysOnlyUnpickler(f, encoding="latin1").load()  # the official batches are Python-2 pickles
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); delete the "
            "folder and download it again (dataset.download=true)"
        ) from err
    if len(data) != len(labels):
        raise DatasetError(f"{path} holds {len(data)} images but {len(labels)} labels; re-download it")
    return data, labels


def load_cifar10(
    root: str | Path, train: bool = True, download: bool = False, verify_checksums: bool = False
) -> tuple[Tensor, Tensor]:
    """Load one CIFAR-10 split into memory.

    Args:
        root: folder that holds (or will hold) ``cifar-10-batches-py/``.
        train: the 50k training batches if True, else the 10k ``test_batch``.
        download: fetch and extract the archive first (needs network).
        verify_checksums: MD5-check the split's files against torchvision's list (~0.5 s).

    Returns:
        images: (N, 3, 32, 32) float32 in [-1, 1] (uint8 ``p`` maps to ``p / 127.5 - 1``).
        labels: (N,) int64 in 0..9.

    Raises:
        DatasetError: files missing, corrupt, or failing the checksum.
    """
    root = Path(root).expanduser()
    if download:
        CIFAR10(str(root), train=train, download=True)
    folder = root / CIFAR10.base_folder
    files = cifar10_files(train)
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found under dataset.root={root} (missing {', '.join(missing)}); "
            f"expected the layout {_layout(root)}. Pass dataset.download=true on a machine with "
            f"network, or copy the extracted cifar-10-batches-py folder to {folder}"
        )
    if verify_checksums:
        bad = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
        if bad:
            raise DatasetError(
                f"CIFAR-10 files {', '.join(bad)} under {folder} fail their MD5 checksum; delete "
                "them and download again (dataset.download=true)"
            )
    batches = [read_cifar_batch(folder / name) for name, _ in files]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    # In place: the training split is ~600 MB in float32, no need for two temporaries.
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0), torch.from_numpy(labels)
