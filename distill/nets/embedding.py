"""Time (and guidance-scale) embeddings shared by the small networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar noise level, shape (B,) -> (B, dim)."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        args = c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def zero_init_embedding(embed_dim: int, out_dim: int | None = None) -> nn.Sequential:
    """Embedding of an extra scalar input whose last layer is zero: it adds exactly 0 until trained."""
    last = nn.Linear(embed_dim, out_dim or embed_dim)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU(), last)


GUIDANCE_SCALE = 1000.0  # w enters as 1000 (1 - 1/w): the range of the time inputs c_noise = 1000 s


def guidance_feature(w: Tensor) -> Tensor:
    """What a guidance embedding is fed: ``1000 (1 - 1/w)``, improved MeanFlow's ``1 - 1/w``
    (imfDiT ``omega_embedder(1 - 1 / w)``) at the scale of our time inputs. 0 at w = 1, bounded as w grows."""
    return GUIDANCE_SCALE * (1 - 1 / w.float())
