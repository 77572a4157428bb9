"""Local stand-ins for on-disk datasets: small image folders and a fake CIFAR-10 in torchvision's format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR_TRAIN_PER_BATCH = 2
CIFAR_TEST_SIZE = 3


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A batch pickle as in cifar-10-python.tar.gz: {'data': uint8 (n, 3072), 'labels': [...]}."""
    with open(path, "wb") as f:
        pickle.dump({"batch_label": path.name, "data": data, "labels": labels, "filenames": []}, f, protocol=2)


@pytest.fixture
def fake_cifar_root(tmp_path: Path) -> Path:
    """``<root>/cifar-10-batches-py`` with 5 x 2 training images and 3 test images."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(CIFAR_TRAIN_PER_BATCH, 3072), dtype=np.uint8)
        write_cifar_batch(folder / f"data_batch_{b}", data, [b, (b + 5) % 10])
    test = rng.integers(0, 256, size=(CIFAR_TEST_SIZE, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, [0, 1, 2])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return tmp_path / "cifar"


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Four images of mixed formats/sizes (one nested), plus a non-image file to ignore."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "a_red.png")
    Image.new("RGB", (12, 12), (0, 0, 255)).save(root / "b_blue.BMP")
    Image.new("L", (9, 15), 128).save(root / "sub" / "c_gray.jpg", quality=100)
    Image.new("RGB", (16, 16), (0, 255, 0)).save(root / "sub" / "d_green.webp", lossless=True)
    (root / "notes.txt").write_text("not an image")
    return root
