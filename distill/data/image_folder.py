"""A folder of images (any nesting) as a dataset in [-1, 1]: unconditional (label 0), or labelled
by class subfolder (ImageNet's ``train/<class>/*.JPEG`` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from distill.data.errors import DatasetError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


def find_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, extension case-insensitive), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def class_folders(root: Path) -> list[str]:
    """The first-level subfolders of ``root`` that hold images, sorted: the class names."""
    return sorted({p.relative_to(root).parts[0] for p in find_images(root) if len(p.relative_to(root).parts) > 1})


def read_captions(files: list[Path]) -> list[str]:
    """The caption of each image: the text of ``<stem>.txt`` beside it (every one must exist)."""
    missing = [f for f in files if not f.with_suffix(".txt").is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} images have no caption file, e.g. {missing[0].with_suffix('.txt')} "
            "(dataset.captions=true reads <image stem>.txt beside each image)"
        )
    return [f.with_suffix(".txt").read_text().strip() for f in files]


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (bicubic), then crop the centre square."""
    w, h = image.size
    scale = resolution / min(w, h)
    # max(.., resolution) guards against rounding the shorter side one pixel below the crop.
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def pil_to_tensor(image: Image.Image) -> Tensor:
    """uint8 PIL image -> (C, H, W) float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


class ImageFolderDataset(Dataset[tuple[Tensor, Tensor]]):
    """Every .png/.jpg/.jpeg/.bmp/.webp under ``path``, resized and centre-cropped; label 0, or with
    ``labelled`` the index of its first-level subfolder in ``class_folders(path)``, or with
    ``captioned`` the image's own index, whose caption (``<image stem>.txt`` beside it) is
    ``captions[index]`` (text-conditional teachers look the prompt up by it).

    Missing or empty folders fail at construction; each file is decoded lazily in
    ``__getitem__`` (an unreadable one raises ``DatasetError`` naming it), and ``verify()``
    checks every file header up front.

    Args:
        path: root folder, searched recursively.
        resolution: output height and width.
        channels: 3 (RGB) or 1 (grayscale).
        labelled: class labels from the first-level subfolders.
        captioned: every image has a caption file beside it.
    """

    def __init__(
        self, path: str | Path, resolution: int, channels: int = 3, labelled: bool = False, captioned: bool = False
    ) -> None:
        self.root = Path(path).expanduser()
        if channels not in (1, 3):
            raise DatasetError(f"dataset.channels={channels}; use 3 (RGB) or 1 (grayscale)")
        if resolution < 1:
            raise DatasetError(f"dataset.resolution={resolution}; use a positive image size")
        if not self.root.is_dir():
            raise DatasetError(f"dataset.path={self.root} does not exist; point dataset.path at a folder of images")
        self.files = find_images(self.root)
        if not self.files:
            raise DatasetError(
                f"no images found under dataset.path={self.root} (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}, recursively); point dataset.path at a "
                "folder that contains images"
            )
        self.resolution = resolution
        self.channels = channels
        self.classes = class_folders(self.root) if labelled else []
        if labelled and len(self.classes) < 2:
            raise DatasetError(
                f"dataset.class_folders=true needs images in two or more subfolders of {self.root} "
                f"(one per class), found {len(self.classes)}"
            )
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index.get(f.relative_to(self.root).parts[0], -1) if labelled else 0 for f in self.files]
        if -1 in self.labels:
            loose = self.files[self.labels.index(-1)]
            raise DatasetError(f"{loose} is not inside a class subfolder of {self.root} (dataset.class_folders=true)")
        self.captions = read_captions(self.files) if captioned else []
        if captioned:
            self.labels = list(range(len(self.files)))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        """Decode file ``index`` to a (C, resolution, resolution) float32 tensor in [-1, 1]."""
        file = self.files[index]
        try:
            with Image.open(file) as image:
                image = image.convert("RGB" if self.channels == 3 else "L")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(
                f"cannot read image {file}: {err}; delete or replace that file "
                "(ImageFolderDataset.verify() lists every unreadable file)"
            ) from err
        return pil_to_tensor(resize_center_crop(image, self.resolution))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.load(index), torch.tensor(self.labels[index], dtype=torch.int64)

    def verify(self) -> int:
        """Open every file's header; raise one ``DatasetError`` listing all unreadable files.

        Returns:
            The number of files checked.
        """
        bad: list[str] = []
        for file in self.files:
            try:
                with Image.open(file) as image:
                    image.verify()  # header and structure only, no full decode
            except Exception as err:  # PIL raises many types for corrupt files
                bad.append(f"{file} ({type(err).__name__}: {err})")
        if bad:
            shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            raise DatasetError(
                f"{len(bad)} of {len(self.files)} images under {self.root} are unreadable:\n  "
                f"{shown}\ndelete or replace them"
            )
        return len(self.files)
