"""Build a network from the plain dict stored in configs and teacher checkpoints."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": TimeMLP, "unet": UNet}


def build_net(spec: dict[str, Any], data_shape: tuple[int, ...]) -> nn.Module:
    """``spec = {"type": "mlp" | "unet", **kwargs}``; shapes come from the data, not the spec."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in NETS:
        raise ValueError(f"net.type={kind!r} is not a known network; choose one of {sorted(NETS)}")
    if kind == "mlp":
        return TimeMLP(tuple(data_shape), **spec)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"net.type=unet needs square images (C, H, H), got data of shape {data_shape}")
    return UNet(sample_size=data_shape[1], channels=data_shape[0], **spec)
