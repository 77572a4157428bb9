"""Fashion-MNIST from its four IDX files (gzipped or not), with fixed train / validation / test splits.

The splits are the benchmark's discipline: every model trains on ``train`` (training images
0-54,999), every default, re-noising time or checkpoint is chosen on ``validation`` (training
images 55,000-59,999), and reported numbers are on ``test`` (the 10,000 ``t10k`` images), on which
nothing is ever tuned.

Where the files are found when ``dataset.root`` is unset, in this order: ``$DISTILL_DATA/fashion-mnist``,
torchvision's download layout ``<cache>/FashionMNIST/raw``, and Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``). A given root is read as is or in torchvision's
layout under it.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from distill.data.errors import DatasetError

FASHION_MNIST_NUM_CLASSES = 10
FASHION_MNIST_SHAPE = (1, 28, 28)
NUM_TRAIN_IMAGES = 60_000
VALIDATION_START = 55_000  # training images from here on are the validation split
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"
FILES = {  # (part, is_train) -> file stem
    ("images", True): "train-images-idx3-ubyte",
    ("labels", True): "train-labels-idx1-ubyte",
    ("images", False): "t10k-images-idx3-ubyte",
    ("labels", False): "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the only element type the Fashion-MNIST files use
Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")

HOW_TO_GET = (
    "get the data one of three ways: `make data` (Debian's dataset-fashion-mnist package, or "
    "torchvision's download), pass dataset.download=true on a machine with network, or put the four "
    "IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz) in a folder named by dataset.root= or $DISTILL_DATA/fashion-mnist"
)


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (``.gz`` or raw) -> uint8 array of the shape its header states.

    Raises:
        DatasetError: wrong magic number, an element type other than unsigned byte, or fewer bytes
            than the header promises (a truncated download).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip raises these for a cut-off or non-gzip file
        raise DatasetError(f"{path} is unreadable ({type(err).__name__}: {err}); delete it and {HOW_TO_GET}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise DatasetError(
            f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'}, "
            f"expected 0000 08 0n); delete it and {HOW_TO_GET}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} ends inside its header: the file is truncated; delete it and {HOW_TO_GET}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} holds {len(data) - header} bytes of data but its header states shape {shape} "
            f"({expected} bytes): the file is truncated or corrupt; delete it and {HOW_TO_GET}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` (gzipped preferred), or None when neither exists."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def has_files(folder: Path) -> bool:
    return all(idx_file(folder, stem) is not None for stem in FILES.values())


def candidate_roots(root: str | Path | None, cache: str | Path | None = None) -> list[Path]:
    """Where the files are looked for, in order (the module docstring gives the rule)."""
    if root is not None:
        given = Path(root).expanduser()
        return [given, given / TORCHVISION_SUBDIR]
    found = []
    if os.environ.get("DISTILL_DATA"):
        found.append(Path(os.environ["DISTILL_DATA"]).expanduser() / "fashion-mnist")
    if cache is not None:
        found.append(Path(cache).expanduser() / TORCHVISION_SUBDIR)
    found.append(DEBIAN_ROOT)
    return found


def find_root(root: str | Path | None, cache: str | Path | None = None) -> Path:
    """The first candidate folder that holds all four files.

    Raises:
        DatasetError: none does; the message lists where it looked and how to get the data.
    """
    candidates = candidate_roots(root, cache)
    for folder in candidates:
        if has_files(folder):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"Fashion-MNIST not found (looked in {looked}); {HOW_TO_GET}")


def download(root: str | Path) -> Path:
    """Fetch the files with torchvision into ``root/FashionMNIST/raw`` (needs network)."""
    from torchvision.datasets import FashionMNIST  # only the download path needs it

    FashionMNIST(str(Path(root).expanduser()), train=True, download=True)
    FashionMNIST(str(Path(root).expanduser()), train=False, download=True)
    return Path(root).expanduser() / TORCHVISION_SUBDIR


def check_split(split: str) -> None:
    """Raises DatasetError for a name that is not one of ``SPLITS``."""
    if split not in SPLITS:
        raise DatasetError(f"split={split!r} is not a Fashion-MNIST split; choose one of {', '.join(SPLITS)}")


def split_rows(split: str, total: int) -> slice:
    """The rows of one split in its file of ``total`` images (train and validation share the training file)."""
    if split == "test":
        return slice(None)
    start = min(VALIDATION_START, total)
    return slice(0, start) if split == "train" else slice(start, total)


def load_fashion_mnist(folder: str | Path, split: Split) -> tuple[Tensor, Tensor]:
    """One split from a folder holding the four files.

    Returns:
        images: (N, 1, 28, 28) float32 in [-1, 1] (uint8 ``p`` maps to ``p / 127.5 - 1``).
        labels: (N,) int64 in 0..9.

    Raises:
        DatasetError: a file is missing, truncated or not IDX, or images and labels disagree.
    """
    folder = Path(folder)
    check_split(split)
    is_train = split != "test"
    arrays = []
    for part in ("images", "labels"):
        path = idx_file(folder, FILES[(part, is_train)])
        if path is None:
            raise DatasetError(f"{folder} has no {FILES[(part, is_train)]}(.gz); {HOW_TO_GET}")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(
            f"{folder}: {images.shape} images but {labels.shape} labels; the files do not belong together; {HOW_TO_GET}"
        )
    rows = split_rows(split, len(images))
    images = torch.from_numpy(images[rows].copy()).float().div_(127.5).sub_(1.0)[:, None]
    return images, torch.from_numpy(labels[rows].astype(np.int64))
