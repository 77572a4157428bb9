"""A tiny Stable-Diffusion-layout pipeline (text encoder, tokenizer, VAE, cross-attention UNet on an
epsilon DDPM schedule) and captioned RGB images, written to disk for tests: the stand-in of the
SD-class teachers that paper configs name."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from PIL import Image

from tests.helpers.diffusers_models import tiny_vae
from tests.helpers.text_pipeline import save_text_pipeline, tiny_text_unet

CAPTIONS = ["a red square", "a blue circle", "a dark square", "a red circle"]


def save_sd_pipeline(directory: Path) -> Path:
    """8x8 RGB images <-> 4x4x4 latents; the text encoder and tokenizer of test_text_teacher."""
    save_text_pipeline(directory)  # tokenizer/, text_encoder/ (its 1-channel unet/ is replaced below)
    torch.manual_seed(0)
    tiny_vae(3, 4).save_pretrained(directory / "vae")
    tiny_text_unet(4, 4).save_pretrained(directory / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        directory / "scheduler"
    )
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return directory


def captioned_rgb_images(directory: Path, count: int = 8) -> Path:
    directory.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (30 * i, 255 - 30 * i, 90)).save(directory / f"{i}.png")
        (directory / f"{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
    return directory
