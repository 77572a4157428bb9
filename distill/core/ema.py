"""Exponential moving average of a module's weights."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """In place: ``ema_p <- decay * ema_p + (1 - decay) * p`` for parameters; buffers are copied.

    ``ema`` and ``model`` must have the same architecture (parameters matched by name).
    decay = 0 copies exactly.
    """
    ema_params, params = dict(ema.named_parameters()), dict(model.named_parameters())
    if ema_params.keys() != params.keys():
        only_ema, only_model = sorted(ema_params.keys() - params.keys()), sorted(params.keys() - ema_params.keys())
        raise ValueError(
            f"ema and model have different parameters: only in the EMA copy {only_ema[:3]} "
            f"({len(only_ema)}), only in the model {only_model[:3]} ({len(only_model)})"
        )
    for name, p in params.items():
        p_ema = ema_params[name]
        src = p.detach().to(p_ema.dtype)
        if decay == 0.0:
            p_ema.copy_(src)
        else:
            p_ema.lerp_(src, 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, b in model.named_buffers():
        ema_buffers[name].copy_(b)
