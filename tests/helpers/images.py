"""A small folder of real images (the digits, saved as PNG), for the image-folder tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i in range(6):
        Image.new("RGB", (12, 10), (40 * i, 90, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder
