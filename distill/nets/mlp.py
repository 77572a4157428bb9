"""A residual, time-conditioned MLP: the network for 2-D data (and a fast one for tiny images)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from distill.core.conditioning import guidance_of, labels_for, null_labels
from distill.nets.embedding import SinusoidalEmbedding, guidance_feature, zero_init_embedding


class ResidualBlock(nn.Module):
    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(embed_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(y))


class TimeMLP(nn.Module):
    """MLP over the flattened input, with the noise level injected into every block.

    Args:
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        width: hidden width.
        depth: number of residual blocks.
        embed_dim: size of the sinusoidal time embedding.
        extra_time: take a second time input ``c_extra`` (MeanFlow's ``t - r``), embedded like
            ``c_noise`` and added to its embedding; zero-initialised, so the net starts as without it.
        num_classes: class-conditional on ``distill.core.conditioning``'s labels (0: unconditional),
            a label embedding (plus the null class) added to the time embedding.
        guidance_embed: take each sample's classifier-free guidance scale w (the condition's
            ``guidance_scale``, else ``default_guidance``) through a zero-initialised embedding of
            ``guidance_feature(w)`` added to the time embedding: the net starts as without it.
        default_guidance: the w of calls whose condition carries none (evaluation, plain sampling).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        width: int = 256,
        depth: int = 4,
        embed_dim: int = 64,
        extra_time: bool = False,
        num_classes: int = 0,
        guidance_embed: bool = False,
        default_guidance: float = 1.0,
    ):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.config = {
            "data_shape": self.data_shape,
            "width": width,
            "depth": depth,
            "embed_dim": embed_dim,
            "extra_time": extra_time,
            "num_classes": num_classes,
        }
        if guidance_embed:  # only then, so that the configs (and checkpoints) of other nets stay as they were
            self.config.update(guidance_embed=True, default_guidance=float(default_guidance))
        self.extra_time = extra_time
        dim = math.prod(self.data_shape)
        self.time_embed = nn.Sequential(SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU())
        # Only present with extra_time, so existing checkpoints keep their exact keys.
        self.extra_embed = zero_init_embedding(embed_dim) if extra_time else None
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        self.guidance_embed = zero_init_embedding(embed_dim) if guidance_embed else None
        self.default_guidance = float(default_guidance)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor, c_extra: Tensor | None = None) -> Tensor:
        emb = self.time_embed(c_noise)
        if self.extra_embed is not None:
            if c_extra is None:
                raise ValueError("this TimeMLP was built with extra_time=True: pass c_extra")
            emb = emb + self.extra_embed(c_extra)
        elif c_extra is not None:
            raise ValueError("c_extra given to a TimeMLP built without extra_time")
        if self.label_embed is not None:
            labels = labels_for(x)
            emb = emb + self.label_embed(null_labels(x, self.num_classes) if labels is None else labels)
        if self.guidance_embed is not None:
            emb = emb + self.guidance_embed(guidance_feature(guidance_of(x, self.default_guidance)))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).view_as(x)
