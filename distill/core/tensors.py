"""Small tensor helpers shared by every layer."""

from __future__ import annotations

import torch
from torch import Tensor


def append_dims(t: Tensor, ndim: int) -> Tensor:
    """Right-pad ``t`` (shape ``(B,)``) with singleton dims so it broadcasts against ``ndim`` dims."""
    if t.ndim > ndim:
        raise ValueError(f"cannot broadcast a {t.ndim}-d time tensor against {ndim}-d data")
    return t.reshape(*t.shape, *([1] * (ndim - t.ndim)))


def batch_time(t: float | Tensor, like: Tensor) -> Tensor:
    """A per-sample time tensor of shape ``(B,)`` on ``like``'s device and dtype."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t
