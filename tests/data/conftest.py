"""Local stand-ins for on-disk datasets: a small image folder (fake CIFAR-10 lives in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


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
