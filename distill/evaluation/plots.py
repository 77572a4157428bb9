"""Pictures people would rather look at than read: sample grids and 2-D scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402


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
