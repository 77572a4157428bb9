"""Latent-space teachers: the pipeline's VAE maps pixels to the latents the teacher denoises.

Everything that trains works in latent space: the training images are encoded once (the
posterior mean, scaled as diffusers pipelines scale it) and cached in shards, so a method sees
latent batches exactly as it would see pixels. Only evaluation leaves latent space: samples are
decoded before they are scored and saved, against the pixel reference set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.io import cached_in_shards

SHARD_SIZE = 4096  # encoded images per cached shard


class LatentCodec(nn.Module):
    """A frozen diffusers ``AutoencoderKL``: ``encode`` pixels in [-1, 1] to scaled latents,
    ``decode`` latents back to pixels in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def train(self, mode: bool = True) -> LatentCodec:
        return super().train(False)  # frozen: never in train mode, whatever Lightning asks

    def pixel_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = latent_shape
        return (int(self.vae.config.out_channels), h * self.factor, w * self.factor)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        return (self.vae.encode(images).latent_dist.mean - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.scale + self.shift).sample.clamp(-1, 1)

    def fingerprint(self) -> str:
        first = next(self.vae.parameters())
        summary = (tuple(first.shape), float(first.double().sum()), self.scale, self.shift)
        return hashlib.sha256(repr(summary).encode()).hexdigest()[:16]


def encode_images(images: Tensor, codec: LatentCodec, cache_dir: str | Path | None, key: str,
                  batch_size: int = 64, progress: bool = False) -> Tensor:
    """Latents of ``images`` (N, C, H, W), read from / written to ``cache_dir/<codec>-<key>`` in shards."""
    folder = None if cache_dir is None else Path(cache_dir) / f"{codec.fingerprint()}-{key}"

    def encode(start: int, stop: int) -> Tensor:
        return torch.cat([codec.encode(images[i:min(i + batch_size, stop)]) for i in range(start, stop, batch_size)])

    return cached_in_shards(folder, len(images), SHARD_SIZE, "latents", encode, progress, "encoding latents")
