"""A frozen image feature network (DINO, a classifier, ...) loaded from a local path, for
discriminators that read pretrained features (GDD's projected GAN, ADD/turbo recipes; docs/methods.md 7, 11).

The network itself is any ``nn.Module`` built from config; its weights come from a local
safetensors file (or a ``torch.save`` state dict read with ``weights_only=True``), never from a
hub. Images in [-1, 1] are mapped to the network's expected input: channels repeated to 3 if it
wants colour, resized, normalised with its mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.io import load_weights
from distill.nets.features import FeatureTap

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Weights from ``.safetensors`` or a ``torch.save``'d state dict (read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network weights {path} do not exist: point weights at a local file")
    if path.suffix == ".safetensors":
        return load_weights(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class FrozenFeatureNetwork(nn.Module):
    """``net`` frozen, read at ``layers``; ``forward(images) -> [features per layer]``.

    Args:
        net: the network (built by config, e.g. ``_target_: torchvision.models.vit_b_16``).
        layers: dotted submodule names to read.
        weights: local weights file; None keeps ``net``'s own (e.g. already loaded).
        input_size: side the images are resized to (bilinear); None keeps their size.
        in_channels: channels ``net`` expects (1-channel images are repeated to 3).
        mean, std: per-channel normalisation after mapping [-1, 1] to [0, 1].
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[str],
        weights: str | None = None,
        input_size: int | None = None,
        in_channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        if weights is not None:
            net.load_state_dict(load_state_dict_file(weights))
        self.net = net.eval().requires_grad_(False)
        self.layers, self.input_size, self.in_channels = list(layers), input_size, in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.tap = FeatureTap(self.net, self.layers, stop_after_last=True)

    def train(self, mode: bool = True) -> FrozenFeatureNetwork:
        return super().train(False)  # pretrained norms and dropout stay in eval mode

    def preprocess(self, images: Tensor) -> Tensor:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean[:, : x.shape[1]]) / self.std[:, : x.shape[1]]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.preprocess(images)
        return self.tap.run(lambda: self.net(x))
