"""Tiny diffusers models and pipelines saved to disk, for the diffusers-teacher tests."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)

TINY = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}


def tiny_vae(channels: int, latent_channels: int, **config) -> AutoencoderKL:
    """An AutoencoderKL between 8x8 images of ``channels`` and 4x4 latents of ``latent_channels``
    (``config``: its scaling and shift factors)."""
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=latent_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        **config,
    )


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**TINY)


def save_pipeline(directory: Path, prediction: str = "epsilon") -> UNet2DModel:
    """A DDPM pipeline directory (model_index.json, unet/, scheduler/), as diffusers writes it."""
    unet = tiny_unet()
    DDPMPipeline(unet, DDPMScheduler(prediction_type=prediction)).save_pretrained(directory)
    return unet


def save_flow_model(directory: Path) -> UNet2DModel:
    """A bare model directory with a flow-matching scheduler config beside it."""
    unet = tiny_unet()
    unet.save_pretrained(directory)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(directory)
    return unet
