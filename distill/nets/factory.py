"""Build a network from the plain dict stored in configs and teacher checkpoints."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": TimeMLP, "unet": UNet}


def build_net(spec: dict[str, Any], data_shape: tuple[int, ...], extra_time: bool | None = None) -> nn.Module:
    """``spec = {"type": "mlp" | "unet", **kwargs}``; shapes come from the data, not the spec.

    Args:
        extra_time: overrides ``spec["extra_time"]`` (a second time input, see ``TimeMLP``); None
            keeps the spec's (default False).
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in NETS:
        raise ValueError(f"net.type={kind!r} is not a known network; choose one of {sorted(NETS)}")
    if extra_time is not None:
        spec["extra_time"] = extra_time
    if kind == "mlp":
        return TimeMLP(tuple(data_shape), **spec)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"net.type=unet needs square images (C, H, H), got data of shape {data_shape}")
    return UNet(sample_size=data_shape[1], channels=data_shape[0], **spec)


def rebuild_with_extra_time(net: nn.Module) -> nn.Module:
    """A fresh net of ``net``'s architecture with ``extra_time=True`` (weights not copied).

    Raises:
        TypeError: ``net`` is not one of ``NETS`` (only they record how to rebuild themselves).
    """
    return rebuild_with(net, "a second time input", extra_time=True)


def rebuild_with(net: nn.Module, what: str, **changes: Any) -> nn.Module:
    """A fresh net of ``net``'s architecture with ``changes`` to its config (weights not copied).

    Raises:
        TypeError: ``net`` is not one of ``NETS`` (only they record how to rebuild themselves).
    """
    if not isinstance(net, tuple(NETS.values())):
        raise TypeError(f"cannot add {what} to a {type(net).__name__}; known nets: {sorted(NETS)}")
    return type(net)(**{**net.config, **changes})
