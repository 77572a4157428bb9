"""LPIPS (Zhang et al. 2018, v0.1, VGG-16 trunk) from local weight files: the distance CD, reflow's
one-step distillation and DMD train with in their papers.

Nothing is downloaded. Two files are needed:

- ``backbone``: torchvision's ImageNet VGG-16 state dict (``vgg16-397923af.pth``, the file
  ``torchvision.models.vgg16(weights="IMAGENET1K_V1")`` downloads), read with
  ``torch.load(weights_only=True)``; only its ``features.*`` tensors are used.
- ``linear``: the LPIPS v0.1 linear calibration of the VGG trunk (``vgg.pth`` of the ``lpips``
  package, 7 KB: ``lin{0..4}.model.1.weight``). ``None`` takes it from an installed ``lpips`` package.

The computation follows richzhang/PerceptualSimilarity ``lpips/lpips.py`` (``LPIPS.forward``):
shift and scale the [-1, 1] inputs, unit-normalise each layer's features over channels, square
their difference, weigh channels by the linear layer, average over space and sum over the five
layers (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError

VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # features[a:b] ends at relu1_2 ... relu5_3
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer
SCALE = (0.458, 0.448, 0.450)
WEIGHTS_HINT = (
    "method.objective.lpips.backbone must name torchvision's VGG-16 ImageNet state dict "
    "(vgg16-397923af.pth) and method.objective.lpips.linear the lpips package's weights/v0.1/vgg.pth "
    "(or leave it null with `pip install lpips`)"
)


def _load(path: str | Path, what: str) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"LPIPS {what} weights not found at {path}: {WEIGHTS_HINT}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _packaged_linear_weights() -> Path:
    try:
        import lpips
    except ImportError as err:
        raise ConfigError(
            f"method.objective.lpips.linear is null and the lpips package is not installed: {WEIGHTS_HINT}"
        ) from err
    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


class LPIPS(nn.Module):
    """Frozen LPIPS distance ``lpips(x, y) -> (B,)`` between images in [-1, 1] (B, 3, H, W).

    Args:
        backbone: path of torchvision's VGG-16 ImageNet state dict.
        linear: path of the LPIPS v0.1 VGG linear weights; None: the installed ``lpips`` package's.
        resize: bilinear resize of both inputs to this side first (the CM paper's CIFAR-10 LPIPS:
            224); None keeps the input size.
    """

    def __init__(self, backbone: str | Path, linear: str | Path | None = None, resize: int | None = 224):
        super().__init__()
        from torchvision.models import vgg16  # the architecture only: no weights are fetched

        features = vgg16(weights=None).features
        state = {
            k.removeprefix("features."): v for k, v in _load(backbone, "backbone").items() if k.startswith("features.")
        }
        try:
            features.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"{backbone} is not a VGG-16 state dict ({err}): {WEIGHTS_HINT}") from err
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG_SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        linear_state = _load(linear if linear is not None else _packaged_linear_weights(), "linear")
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in linear_state:
                raise ConfigError(f"{linear} has no {key}: {WEIGHTS_HINT}")
            lin.weight.data.copy_(linear_state[key])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.resize = resize
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: never in training mode

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.resize is not None and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=self.resize, mode="bilinear", align_corners=False)
        h_x, h_y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for block, lin in zip(self.slices, self.lins, strict=True):
            h_x, h_y = block(h_x), block(h_y)
            diff = (unit_normalise(h_x) - unit_normalise(h_y)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def unit_normalise(features: Tensor, eps: float = 1e-10) -> Tensor:
    """Features divided by their L2 norm over channels (lpips ``normalize_tensor``)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualDistance:
    """LPIPS as a training distance, built on first use from ``method.objective.lpips``
    (``{backbone, linear, resize}``, the arguments of ``LPIPS``). Deliberately not a module of the
    method: its 528 MB of VGG weights are never checkpointed and are read from the local files again.
    """

    def __init__(self, spec: dict | None):
        if not spec or not spec.get("backbone"):
            raise ConfigError(f"method.objective.loss=lpips needs method.objective.lpips.backbone: {WEIGHTS_HINT}")
        self.spec, self.net = dict(spec), None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """(B,) LPIPS distances between image batches x and y in [-1, 1] (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"method.objective.loss=lpips compares RGB images, not samples of shape {tuple(x.shape[1:])}: "
                "use loss=l2 for this data"
            )
        if self.net is None:
            self.net = LPIPS(**self.spec)
        return self.net.to(x.device)(x.float(), y.float())
