from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.cifar10 import load_cifar10
from distill.data.errors import DatasetError


def _raw(root: Path, name: str) -> dict:
    with open(root / "cifar-10-batches-py" / name, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_loads_train_and_test_in_torchvision_layout(fake_cifar_root: Path) -> None:
    x, y = load_cifar10(fake_cifar_root, train=True)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [1, 6, 2, 7, 3, 8, 4, 9, 5, 0]
    raw = _raw(fake_cifar_root, "data_batch_2")["data"]  # rows are R plane, G plane, B plane
    expected = torch.from_numpy(raw[1].reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.allclose(x[3], expected)
    assert x.min() >= -1 and x.max() <= 1

    x_test, y_test = load_cifar10(fake_cifar_root, train=False)
    assert x_test.shape == (3, 3, 32, 32) and y_test.tolist() == [0, 1, 2]


def test_missing_dataset_names_layout_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}" in msg
    assert "dataset.download=true" in msg and "copy" in msg


def test_partially_missing_names_files(fake_cifar_root: Path) -> None:
    (fake_cifar_root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_4"):
        load_cifar10(fake_cifar_root)
    assert load_cifar10(fake_cifar_root, train=False)[0].shape[0] == 3  # the test split is intact


def test_corrupt_batch_is_named(fake_cifar_root: Path) -> None:
    (fake_cifar_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_batch is not a readable CIFAR-10 batch"):
        load_cifar10(fake_cifar_root, train=False)


def test_checksum_verification_rejects_stand_in(fake_cifar_root: Path) -> None:
    with pytest.raises(DatasetError, match="fail their MD5 checksum"):
        load_cifar10(fake_cifar_root, verify_checksums=True)
