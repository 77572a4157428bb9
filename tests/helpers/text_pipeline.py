"""A tiny local text-to-image pipeline and a captioned image folder, for the text-teacher tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image

WORDS = ["[PAD]", "[UNK]", "a", "red", "blue", "square", "circle", "dark"]


def tiny_text_unet(sample_size: int, channels: int) -> UNet2DConditionModel:
    """The smallest cross-attention UNet the text teachers accept (8-d text embeddings)."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def save_text_pipeline(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", model_max_length=6
    ).save_pretrained(directory / "tokenizer")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(WORDS),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=6,
        )
    ).save_pretrained(directory / "text_encoder", safe_serialization=True)
    tiny_text_unet(8, 1).save_pretrained(directory / "unet")
    DDPMScheduler().save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return directory


def captioned_images(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for i, caption in enumerate(["a red square", "a blue circle", "a dark square", "a red circle"] * 2):
        Image.new("L", (8, 8), 30 * i).save(directory / f"{i}.png")
        (directory / f"{i}.txt").write_text(caption)
    return directory


def captioned_run(teacher: Path, images: Path) -> list[str]:
    """Overrides that train a diffusers text teacher on the 8x8 ``captioned_images``."""
    return [
        "teacher=diffusers",
        f"teacher.path={teacher}",
        "dataset=image_folder",
        f"dataset.path={images}",
        "dataset.resolution=8",
        "dataset.channels=1",
        "dataset.captions=true",
        "eval.metric=sw",
        "train.batch_size=4",
    ]
