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
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.core.io import save_weights

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
    shards = []
    for index, start in enumerate(tqdm(range(0, len(images), SHARD_SIZE), desc="encoding latents",
                                       disable=not progress, leave=False)):
        path = None if folder is None else folder / f"shard_{index:05d}.safetensors"
        if path is not None and path.is_file():
            shards.append(load_file(str(path))["latents"])
            continue
        chunk = images[start:start + SHARD_SIZE]
        latents = torch.cat([codec.encode(chunk[i:i + batch_size]) for i in range(0, len(chunk), batch_size)])
        if path is not None:
            save_weights(path, {"latents": latents})  # atomic: a crash never leaves half a shard
        shards.append(latents)
    return torch.cat(shards)
