from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import distill.data.fashion_mnist as fm
from distill.data.datamodule import DataModule
from distill.data.errors import DatasetError
from tests.helpers.fashion_mnist import encoded_index, idx_bytes, write_fashion_mnist, write_idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_what_was_written(tmp_path: Path, gz: bool) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x", array, gz)
    read = fm.read_idx(tmp_path / ("x.gz" if gz else "x"))
    assert read.shape == (5, 28, 28) and np.array_equal(read, array)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_is_one_clear_error(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.ones((4, 28, 28), np.uint8))[:-100]
    path = tmp_path / ("x.gz" if gz else "x")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    with pytest.raises(DatasetError, match=r"truncated.*make data.*dataset.download=true.*dataset.root="):
        fm.read_idx(path)


def test_cut_off_gzip_stream_is_one_clear_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.ones((40, 28, 28), np.uint8), gz=True)
    whole = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(whole[: len(whole) // 2])  # a download that stopped half-way
    with pytest.raises(DatasetError, match=r"unreadable.*make data"):
        fm.read_idx(tmp_path / "x.gz")


def test_wrong_magic_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(DatasetError, match=r"not an IDX file.*magic 89504e47"):
        fm.read_idx(tmp_path / "x")


def test_splits_are_the_fixed_ranges_and_never_overlap(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=60_000, n_test=30, gz=False)
    train, validation, test = (fm.load_fashion_mnist(tmp_path, s) for s in ("train", "validation", "test"))
    assert torch.equal(encoded_index(train[0]), torch.arange(0, 55_000))
    assert torch.equal(encoded_index(validation[0]), torch.arange(55_000, 60_000))
    assert torch.equal(encoded_index(test[0]), torch.arange(30))
    assert torch.equal(validation[1], torch.arange(55_000, 60_000) % 10)  # labels travel with their images
    assert train[0].shape == (55_000, 1, 28, 28) and train[0].dtype == torch.float32
    assert train[0].min() == -1.0 and train[0].max() <= 1.0


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, 12, 3)
    with pytest.raises(DatasetError, match="choose one of train, validation, test"):
        fm.load_fashion_mnist(tmp_path, "heldout")


def test_root_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, cache, debian = tmp_path / "env", tmp_path / "cache", tmp_path / "debian"
    monkeypatch.setenv("DISTILL_DATA", str(env))
    monkeypatch.setattr(fm, "DEBIAN_ROOT", debian)
    write_fashion_mnist(debian, 12, 3)
    assert fm.find_root(None, cache) == debian
    write_fashion_mnist(cache / "FashionMNIST" / "raw", 12, 3)
    assert fm.find_root(None, cache) == cache / "FashionMNIST" / "raw"
    write_fashion_mnist(env / "fashion-mnist", 12, 3, gz=False)
    assert fm.find_root(None, cache) == env / "fashion-mnist"
    given = tmp_path / "given"
    write_fashion_mnist(given / "FashionMNIST" / "raw", 12, 3)  # torchvision's layout under dataset.root
    assert fm.find_root(given, cache) == given / "FashionMNIST" / "raw"


def test_missing_data_names_the_three_ways_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "debian")
    with pytest.raises(DatasetError) as err:
        fm.find_root(None, tmp_path / "cache")
    msg = str(err.value)
    assert str(tmp_path / "debian") in msg and str(tmp_path / "cache" / "FashionMNIST" / "raw") in msg
    assert "make data" in msg and "dataset.download=true" in msg and "dataset.root=" in msg


def test_datamodule_trains_on_train_and_scores_on_the_chosen_split(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=55_010, n_test=7)
    dm = DataModule("fashion_mnist", batch_size=4, root=tmp_path)
    assert dm.data_shape == (1, 28, 28) and dm.num_classes == 10 and dm.kind == "image"
    assert torch.equal(encoded_index(dm.train_tensor()), torch.arange(55_000))
    assert torch.equal(encoded_index(dm.reference_samples()), torch.arange(7))
    validation = DataModule("fashion_mnist", batch_size=4, root=tmp_path, reference_split="validation")
    assert torch.equal(encoded_index(validation.reference_samples()), torch.arange(55_000, 55_010))
    with pytest.raises(DatasetError, match="dataset.reference_split='train'; choose test"):
        DataModule("fashion_mnist", batch_size=4, root=tmp_path, reference_split="train")


def test_subset_trains_on_a_seeded_share_of_the_train_split(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=300, n_test=4)
    first = DataModule("fashion_mnist", batch_size=4, root=tmp_path, subset=32, seed=1).train_tensor()
    again = DataModule("fashion_mnist", batch_size=4, root=tmp_path, subset=32, seed=1).train_tensor()
    other = DataModule("fashion_mnist", batch_size=4, root=tmp_path, subset=32, seed=2).train_tensor()
    assert len(first) == 32 and torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(DatasetError, match="dataset.subset=0"):
        DataModule("fashion_mnist", batch_size=4, root=tmp_path, subset=0)
