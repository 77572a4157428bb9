from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.array import load_array_split
from distill.data.datamodule import DataModule
from distill.data.errors import DatasetError


def test_uint8_images_with_labels_split_into_disjoint_train_and_validation(tmp_path: Path) -> None:
    images = np.arange(40, dtype=np.uint8)[:, None, None].repeat(6, 1).repeat(6, 2)  # image i is all i
    np.savez(tmp_path / "data.npz", x=images, y=np.arange(40) % 4)
    dm = DataModule("array", batch_size=4, path=tmp_path / "data.npz", validation_fraction=0.25)
    assert dm.data_shape == (1, 6, 6) and dm.kind == "image" and dm.num_classes == 4
    train, held = dm.train_tensor(), dm.reference_samples()
    ids = lambda x: ((x[:, 0, 0, 0] + 1) * 127.5).round().long()  # noqa: E731
    assert len(held) == 10 and len(train) == 30
    assert sorted(ids(train).tolist() + ids(held).tolist()) == list(range(40))
    assert torch.equal(dm.train_labels(), ids(train) % 4)
    again = DataModule("array", batch_size=4, path=tmp_path / "data.npz", validation_fraction=0.25, seed=7)
    assert torch.equal(again.reference_samples(), held)  # the split does not follow the run's seed


def test_float_images_in_unit_range_map_to_model_space_and_channels_move_first(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((20, 5, 5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    x, y = load_array_split(tmp_path / "x.npy", "train", 0.5)
    assert x.shape == (10, 3, 5, 5) and torch.all(y == 0)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9


def test_points_are_a_point_set_of_their_own_dimension(tmp_path: Path) -> None:
    points = np.random.default_rng(0).normal(size=(50, 3)) * 4
    np.save(tmp_path / "p.npy", points)
    dm = DataModule("array", batch_size=4, path=tmp_path / "p.npy")
    assert dm.kind == "2d" and dm.data_shape == (3,) and dm.num_classes == 0
    assert torch.allclose(
        torch.cat([dm.train_tensor(), dm.reference_samples()]).sort(0).values,
        torch.from_numpy(points).float().sort(0).values,
    )


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ({"z": np.zeros((4, 2))}, "store the data under one of x, images, data"),
        ({"x": np.zeros((4, 2)), "y": np.arange(3)}, "labels must be N=4 non-negative integers"),
        ({"x": np.full((4, 3, 3), 2.0)}, r"float images span \[2, 2\]"),
        ({"x": np.zeros((4, 3, 3, 2))}, r"expected images \(N, H, W\) or \(N, H, W, C\) with C = 1 or 3"),
    ],
)
def test_bad_arrays_get_one_error_naming_the_fix(tmp_path: Path, contents: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **contents)
    with pytest.raises(DatasetError, match=message):
        load_array_split(tmp_path / "bad.npz", "train")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="object arrays are refused"):
        load_array_split(tmp_path / "obj.npy", "train")
