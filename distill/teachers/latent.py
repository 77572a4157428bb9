"""Latent-space teachers: the pipeline's VAE maps pixels to the latents the teacher denoises.

Everything that trains works in latent space: the training images are encoded once (the
posterior mean, scaled as diffusers pipelines scale it) and cached in shards, so a method sees
latent batches exactly as it would see pixels. Only evaluation leaves latent space: samples are
decoded before they are scored and saved, against the pixel reference set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.io import cache_key, cached_in_shards, weight_summary

SHARD_SIZE = 4096  # encoded images per cached shard


class LatentCodec(nn.Module):
    """A frozen diffusers VAE: ``encode`` pixels in [-1, 1] to normalised latents, ``decode`` latents
    back to pixels in [-1, 1]. ``AutoencoderKL`` (SD, SD3, FLUX.1) is shifted and scaled by its
    ``shift_factor`` / ``scaling_factor``; Qwen-Image's video VAE (``AutoencoderKLQwenImage``) takes
    one-frame clips and normalises per channel by its ``latents_mean`` / ``latents_std``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.video = getattr(config, "latents_mean", None) is not None  # (B, C, frames, H, W) in and out
        channels = int(config.z_dim) if self.video else int(config.latent_channels)
        if self.video:
            shift, scale = torch.tensor(config.latents_mean), 1.0 / torch.tensor(config.latents_std)
            self.factor = 2 ** len(config.temperal_downsample)
            self.factors = (tuple(config.latents_mean), tuple(config.latents_std))
        else:
            self.factors = (float(config.scaling_factor), float(getattr(config, "shift_factor", None) or 0.0))
            shift, scale = torch.full((channels,), self.factors[1]), torch.full((channels,), self.factors[0])
            self.factor = 2 ** (len(config.block_out_channels) - 1)
        # latents = (z - shift) * scale, per channel
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.out_channels = int(config.input_channels if self.video else config.out_channels)

    def train(self, mode: bool = True) -> LatentCodec:
        return super().train(False)  # frozen: never in train mode, whatever Lightning asks

    def pixel_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = latent_shape
        return (self.out_channels, h * self.factor, w * self.factor)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        z = self.vae.encode(images.unsqueeze(2) if self.video else images).latent_dist.mean
        return ((z.squeeze(2) if self.video else z) - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = latents / self.scale + self.shift
        pixels = self.vae.decode(z.unsqueeze(2) if self.video else z).sample
        return (pixels[:, :, 0] if self.video else pixels).clamp(-1, 1)

    def fingerprint(self) -> str:
        # an AutoencoderKL's summary is unchanged since per-channel factors came in: its caches stay valid
        return cache_key(repr((*weight_summary(self.vae), *self.factors)))


def encode_images(
    images: Tensor,
    codec: LatentCodec,
    cache_dir: str | Path | None,
    key: str,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Latents of ``images`` (N, C, H, W), read from / written to ``cache_dir/<codec>-<key>`` in shards."""
    folder = None if cache_dir is None else Path(cache_dir) / f"{codec.fingerprint()}-{key}"

    def encode(start: int, stop: int) -> Tensor:
        return torch.cat([codec.encode(images[i : min(i + batch_size, stop)]) for i in range(start, stop, batch_size)])

    return cached_in_shards(folder, len(images), SHARD_SIZE, "latents", encode, progress, "encoding latents")
