"""Small, standalone time-conditioned discriminators ``D(x_s, s) -> logits`` for our data sizes.

Images get a few strided convolutions (GroupNorm, SiLU) and per-location ("patch") logits, or
one pooled logit; flat and 2-D data get an MLP. The noise level enters as a sinusoidal
embedding of ``c_noise = 1000 s`` (the student's own convention), added to every block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.nets.embedding import SinusoidalEmbedding


def _time_embedding(embed_dim: int) -> nn.Module:
    return nn.Sequential(SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU())


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class DownBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv with stride 2, then the time embedding as a per-channel bias."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.emb = nn.Linear(embed_dim, c_out)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.conv(self.act(self.norm(h))) + self.emb(emb)[:, :, None, None]


class ConvDiscriminator(nn.Module):
    """Strided-conv discriminator for (C, H, W) images.

    Args:
        channels: image channels.
        width: channels after the input conv; doubled by every strided block.
        depth: number of stride-2 blocks (8x8 digits: 2 gives 2x2 logits).
        embed_dim: size of the time embedding.
        groups: GroupNorm groups (reduced to a divisor of each channel count).
        pooled: one logit per sample (spatial mean) instead of per-location logits.
    """

    def __init__(
        self, channels: int, width: int = 32, depth: int = 2, embed_dim: int = 64, groups: int = 8, pooled: bool = False
    ):
        super().__init__()
        self.time_embed = _time_embedding(embed_dim)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        widths = [width * 2**i for i in range(depth + 1)]
        self.blocks = nn.ModuleList(
            DownBlock(a, b, embed_dim, groups) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(widths[-1], groups), widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 1, 1)
        )
        self.pooled = pooled

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """x: (B, C, H, W); s: (B,) FM time. Returns (B, H', W') logits, or (B,) if pooled."""
        emb = self.time_embed(1000 * s)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        logits = self.head(h).squeeze(1)
        return logits.mean(dim=(1, 2)) if self.pooled else logits


class MLPDiscriminator(nn.Module):
    """MLP discriminator over flattened samples: ``depth`` SiLU layers, each given the time embedding.

    Args:
        dim: number of features of one (flattened) sample.
        width: hidden width.
        depth: hidden layers.
        embed_dim: size of the time embedding.
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 2, embed_dim: int = 64):
        super().__init__()
        self.time_embed = _time_embedding(embed_dim)
        self.layers = nn.ModuleList(nn.Linear(dim if i == 0 else width, width) for i in range(depth))
        self.embs = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """x: (B, ...); s: (B,) FM time. Returns (B,) logits."""
        emb = self.time_embed(1000 * s)
        h = x.flatten(1)
        for layer, proj in zip(self.layers, self.embs, strict=True):
            h = self.act(layer(h) + proj(emb))
        return self.out(h).squeeze(1)


def build_discriminator(
    data_shape: Sequence[int], width: int | None = None, depth: int = 2, embed_dim: int = 64, pooled: bool = False
) -> nn.Module:
    """A conv discriminator for (C, H, W) data, else an MLP (``pooled`` applies to images only).

    ``width`` defaults to 32 base channels for images and 128 hidden units for the MLP.
    """
    data_shape = tuple(int(d) for d in data_shape)
    if len(data_shape) == 3:
        return ConvDiscriminator(data_shape[0], width or 32, depth, embed_dim, pooled=pooled)
    return MLPDiscriminator(math.prod(data_shape), width or 128, depth, embed_dim)


def data_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The sample shape a ``VelocityModel`` over our nets (``TimeMLP``, ``UNet``) or a diffusers model works on.

    Methods that own a discriminator build it before they see data; this reads the shape from
    the student instead. Raises ValueError for a network it does not know.
    """
    net = getattr(model, "net", model)
    for holder in (model, net):  # an adapter that knows its shape (a text-to-image transformer's) says so
        if hasattr(holder, "data_shape"):
            return tuple(holder.data_shape)
    # our UNet wraps a diffusers model as ``.model``; a diffusers teacher's ``net`` is one itself
    config = getattr(getattr(net, "model", None), "config", None) or getattr(net, "config", None)
    if config is not None and hasattr(config, "sample_size"):
        size = config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config.in_channels), int(h), int(w))
    raise ValueError(f"cannot read the data shape from a {type(net).__name__}: pass data_shape explicitly")


# --- heads on another network's features (DMD2, GDD: the backbone is not the discriminator's own) ---


class ConvHead(nn.Module):
    """DMD2's ``cls_pred_branch``: strided 4x4 convs (GroupNorm, SiLU), then a 1x1 conv to logits.

    Args:
        channels: feature channels.
        num_downsamples: stride-2 convs (the head of a 4x4 bottleneck needs one, 2x2 none).
        groups: GroupNorm groups (reduced to a divisor of ``channels``).
        final_kernel: 0, or the side left after the downsamples: one more conv of that kernel and
            stride (GroupNorm, SiLU) reduces the map to a single logit, as DMD2's 4x4/s4 conv
            (tianweiy/DMD2 main/edm/edm_guidance.py:47-56).
    """

    def __init__(self, channels: int, num_downsamples: int, groups: int = 32, final_kernel: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_downsamples):
            layers += [
                nn.Conv2d(channels, channels, 4, stride=2, padding=1),
                nn.GroupNorm(_groups(channels, groups), channels),
                nn.SiLU(),
            ]
        if final_kernel > 0:
            layers += [
                nn.Conv2d(channels, channels, final_kernel, stride=final_kernel),
                nn.GroupNorm(_groups(channels, groups), channels),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*layers, nn.Conv2d(channels, 1, 1))

    def forward(self, h: Tensor) -> Tensor:
        """(B, C, H, W) features -> (B, H', W') logits."""
        return self.body(h).squeeze(1)


class VectorHead(nn.Module):
    """Features whose last axis is channels ((B, D) vectors or (B, N, D) tokens) -> per-row logits.

    Wide features (a residual stream) are layer-normalised first; a handful of raw coordinates
    (an analytic teacher's "features" are the 2-D points themselves) are not, as that would erase
    their scale.
    """

    def __init__(self, dim: int, width: int = 128, normalize: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(dim) if normalize else nn.Identity(),
            nn.Linear(dim, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        """(B, ..., D) -> (B, ...) logits."""
        return self.body(h).squeeze(-1)


def head_for(shape: Sequence[int], width: int = 128, groups: int = 32, single_logit: bool = False) -> nn.Module:
    """The head for per-sample features of ``shape``: conv for (C, H, W) maps (downsampled to about
    2x2, at most 3 times; ``single_logit``: to at most 4x4, then one conv over the whole map, DMD2's
    head), a vector head for (D,) vectors and (N, D) tokens."""
    shape = tuple(shape)
    if len(shape) == 3:
        side = min(shape[1:])
        if single_logit:
            downs = max(0, (side // 4).bit_length() - 1)  # 8x8 -> one stride-2 conv to 4x4
            return ConvHead(shape[0], downs, groups, final_kernel=max(1, side >> downs))
        return ConvHead(shape[0], min(3, max(0, side.bit_length() - 2)), groups)
    if len(shape) in (1, 2):
        return VectorHead(shape[-1], width, normalize=shape[-1] >= 16)
    raise ValueError(f"no discriminator head for features of per-sample shape {shape}")


class FeatureHeads(nn.Module):
    """One head per tapped layer: the trainable part of a discriminator on a borrowed backbone.

    Logits come back as a list (one entry per head), the multi-head form ``distill.core.gan`` averages.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], width: int = 128, groups: int = 32, single_logit: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(head_for(s, width, groups, single_logit) for s in shapes)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} feature maps for {len(self.heads)} heads")
        return [head(f.float()) for head, f in zip(self.heads, features, strict=True)]


def channel_mean_logits(features: Tensor) -> Tensor:
    """SiDA's parameter-free head: each location's mean over channels, one logit per location.

    (B, C, H, W) maps give (B, H, W); vectors (B, D) and tokens (B, N, D), channels last, give (B,)
    and (B, N). At least float32, as low-precision features are averaged.
    """
    h = features.to(torch.promote_types(features.dtype, torch.float32))
    return h.mean(dim=1) if h.ndim == 4 else h.mean(dim=-1)
