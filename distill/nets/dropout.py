"""The dropout rate of the networks trained from a teacher.

A teacher checkpoint records the architecture it was trained with, dropout rate included, while a
distillation recipe picks its own rate for the copies it trains (MeanFlow and sCT on CIFAR-10: 0.2).
The teacher itself runs in eval mode, so changing the rate on it only reaches its trained copies.
"""

from __future__ import annotations

from torch import nn

from distill.core.errors import ConfigError


def set_residual_dropout(net: nn.Module, p: float) -> int:
    """In place: the rate of every residual block's dropout (a module named ``dropout``, as diffusers'
    ``ResnetBlock2D`` has) set to ``p``; returns how many. Attention dropout is left alone: the recipes
    that set a rate (py-meanflow's and FastGen's UNets) drop out in residual blocks only."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"teacher.train_dropout={p} must lie in [0, 1)")
    layers = [
        m for name, m in net.named_modules() if name.rsplit(".", 1)[-1] == "dropout" and isinstance(m, nn.Dropout)
    ]
    if p > 0 and not layers:
        raise ConfigError(
            f"teacher.train_dropout={p}: the teacher's {type(net).__name__} has no residual dropout "
            "layer to set (a UNet has one per residual block); set teacher.train_dropout=null"
        )
    for layer in layers:
        layer.p = float(p)
    return len(layers)
