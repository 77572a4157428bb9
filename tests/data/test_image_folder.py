from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from distill.data.errors import DatasetError
from distill.data.image_folder import ImageFolderDataset


def test_finds_images_recursively_and_converts(image_dir: Path) -> None:
    ds = ImageFolderDataset(image_dir, resolution=8)
    assert [p.name for p in ds.files] == ["a_red.png", "b_blue.BMP", "c_gray.jpg", "d_green.webp"]
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.item() == 0 and y.dtype == torch.int64
    assert torch.allclose(x[0], torch.ones(8, 8)) and torch.allclose(x[1:], -torch.ones(2, 8, 8))
    assert torch.allclose(ds[3][0][1], torch.ones(8, 8))  # lossless webp green
    gray = ds[2][0]
    assert torch.allclose(gray, torch.full_like(gray, 128 / 127.5 - 1), atol=2 / 127.5)


def test_grayscale_channels(image_dir: Path) -> None:
    ds = ImageFolderDataset(image_dir, resolution=6, channels=1)
    assert all(ds[i][0].shape == (1, 6, 6) for i in range(len(ds)))


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 40x10: left quarter black, rest white -> resized to 32x8, centre 8 columns are all white;
    # a 10x40 image with a black top quarter likewise crops to white.
    img = Image.new("L", (40, 10), 255)
    img.paste(0, (0, 0, 10, 10))
    img.save(tmp_path / "wide.png")
    x = ImageFolderDataset(tmp_path, resolution=8, channels=1)[0][0]
    assert x.shape == (1, 8, 8) and torch.allclose(x, torch.ones_like(x), atol=1e-6)

    img = Image.new("L", (10, 40), 255)
    img.paste(0, (0, 0, 10, 20))  # top half black: the crop straddles the edge
    (tmp_path / "wide.png").unlink()
    img.save(tmp_path / "tall.png")
    x = ImageFolderDataset(tmp_path, resolution=8, channels=1)[0][0]
    assert (x[0, 0] < -0.9).all() and (x[0, -1] > 0.9).all()


def test_missing_path_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError,
        match=r"dataset.path=.*nope does not exist; point dataset.path at a folder of images",
    ):
        ImageFolderDataset(tmp_path / "nope", resolution=8)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found under dataset.path="):
        ImageFolderDataset(tmp_path, resolution=8)


def test_unreadable_image_is_named_lazily_and_by_verify(image_dir: Path) -> None:
    (image_dir / "zz_broken.png").write_bytes(b"definitely not a png")
    ds = ImageFolderDataset(image_dir, resolution=8)  # construction does not decode
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(DatasetError, match="cannot read image .*zz_broken.png"):
        ds[len(ds) - 1]
    with pytest.raises(DatasetError, match=r"1 of 5 images .* unreadable:\n  .*zz_broken.png"):
        ds.verify()


def test_verify_counts_good_files(image_dir: Path) -> None:
    assert ImageFolderDataset(image_dir, resolution=4).verify() == 4


def test_bad_channels_and_error_type(image_dir: Path) -> None:
    with pytest.raises(ValueError, match="dataset.channels=2"):  # DatasetError is a ValueError
        ImageFolderDataset(image_dir, resolution=8, channels=2)


def test_class_subfolders_become_labels(tmp_path):
    for name, count in (("n02", 2), ("n01", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (10, 10), (20 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, resolution=8, labelled=True)
    assert ds.classes == ["n01", "n02"] and sorted(int(ds[i][1]) for i in range(len(ds))) == [0, 0, 0, 1, 1]
    Image.new("RGB", (10, 10)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="loose.png is not inside a class subfolder"):
        ImageFolderDataset(tmp_path, resolution=8, labelled=True)
    assert int(ImageFolderDataset(tmp_path, resolution=8)[0][1]) == 0  # unlabelled: every label 0


def test_class_folders_need_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetError, match="two or more subfolders"):
        ImageFolderDataset(tmp_path, resolution=8, labelled=True)
