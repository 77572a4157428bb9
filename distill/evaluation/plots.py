"""Pictures people would rather look at than read: sample grids and 2-D scatter plots (and the
samples themselves as arrays, for whoever wants to look further)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from distill.core.io import atomic_write  # noqa: E402
from distill.metrics.features import to_uint8  # noqa: E402


def save_samples_png(samples: Tensor, path: str | Path, title: str = "", max_images: int = 64) -> Path:
    """Images (N, C, H, W) in [-1, 1] as a grid; 2-D points (N, 2) as a scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        pts = samples.detach().float().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    images = samples[:max_images].detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5
    nrow = int(math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    if grid.shape[-1] < 256:  # upscale tiny images (8x8 digits) so the PNG is legible
        scale = max(1, 256 // grid.shape[-1])
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, path)
    return path


def save_samples_array(samples: Tensor, path: str | Path) -> Path:
    """Samples as an ``.npy`` that ``dataset=array`` reads back: images as uint8 (N, H, W) for one
    channel or (N, H, W, C), quantised as the metrics see them; points (N, D) as float32."""
    import numpy as np

    x = samples.detach().cpu()
    if x.ndim == 4:
        x = to_uint8(x).permute(0, 2, 3, 1)
        x = x[..., 0] if x.shape[-1] == 1 else x
    else:
        x = x.float()
    array = x.numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary's name
            np.save(f, array)

    atomic_write(path, write)
    return Path(path)


def save_sample_sets(folder: str | Path, tag: str, samples: dict[str, Tensor], arrays: bool = False) -> None:
    """A grid (and with ``arrays`` the whole set as ``.npy``) per ``sampler@nfe`` entry of ``samples``,
    named ``<tag>_<sampler>_nfe<k>``."""
    for name, x in samples.items():
        sampler, nfe = name.split("@")
        path = save_samples_png(x, Path(folder) / f"{tag}_{sampler}_nfe{nfe}.png", f"{tag} {sampler} NFE={nfe}")
        if arrays:
            save_samples_array(x, path.with_suffix(".npy"))
