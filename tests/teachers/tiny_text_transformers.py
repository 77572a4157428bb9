"""Tiny random SD3, FLUX.1 and Qwen-Image pipelines saved to disk: the real classes with a few
hundred parameters each, word-level tokenizers built here, nothing downloaded. Without a VAE the
transformers denoise 1x8x8 "latents" directly (8x8 grey images); with one (``vae=True``: the
family's own VAE class, 2 latent channels, factor 2) they take 8x8 RGB images as 2x4x4 latents."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "</s>", "a", "red", "blue", "square", "circle", "dark", "<|im_start|>", "<|im_end|>"]
WIDTH = 8  # hidden size of every tiny text encoder


def save_tokenizer(directory: Path, max_length: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>", model_max_length=max_length
    ).save_pretrained(directory)


def clip(projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(WORDS),
        hidden_size=WIDTH,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=6,
        projection_dim=WIDTH,
        eos_token_id=2,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5(width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(WORDS),
            d_model=width,
            d_kv=4,
            d_ff=16,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=4,
        )
    )


def autoencoder_kl():
    """An AutoencoderKL as SD3 / FLUX.1 use, with a shift factor (FLUX's) and a scale."""
    from tests.helpers.diffusers_models import tiny_vae

    return tiny_vae(3, 2, scaling_factor=0.5, shift_factor=0.1)


def qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=2,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.2],
        latents_std=[1.5, 2.0],
    )


def save_sd3_pipeline(directory: Path, vae: bool = False) -> Path:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        save_tokenizer(directory / name, 6)
    c = 2 if vae else 1
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=c,
        out_channels=c,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=2 * WIDTH,
        caption_projection_dim=8,
        pooled_projection_dim=2 * WIDTH,
        pos_embed_max_size=8,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=autoencoder_kl() if vae else None,
        text_encoder=clip(True),
        tokenizer=None,
        text_encoder_2=clip(True),
        tokenizer_2=None,
        text_encoder_3=t5(2 * WIDTH),
        tokenizer_3=None,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    _name_tokenizers(directory, ("tokenizer", "tokenizer_2", "tokenizer_3"))
    return directory


def save_flux_pipeline(directory: Path, guidance_embeds: bool = False, vae: bool = False) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    for name in ("tokenizer", "tokenizer_2"):
        save_tokenizer(directory / name, 6)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=8 if vae else 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=autoencoder_kl() if vae else None,
        text_encoder=clip(False),
        tokenizer=None,
        text_encoder_2=t5(WIDTH),
        tokenizer_2=None,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    _name_tokenizers(directory, ("tokenizer", "tokenizer_2"))
    return directory


def qwen_text_encoder():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(WORDS),
            "hidden_size": WIDTH,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 0]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": WIDTH,
            "fullatt_block_indexes": [0],
        },
        vocab_size=len(WORDS),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def save_qwen_pipeline(directory: Path, vae: bool = False) -> Path:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(0)
    save_tokenizer(directory / "tokenizer", 64)
    c = 2 if vae else 1
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * c,
        out_channels=c,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        axes_dims_rope=(2, 2, 4),
    )
    pipe = QwenImagePipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.2),
        vae=qwen_vae() if vae else None,
        text_encoder=qwen_text_encoder(),
        tokenizer=None,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    _name_tokenizers(directory, ("tokenizer",))
    return directory


def _name_tokenizers(directory: Path, names: tuple[str, ...]) -> None:
    """The pipelines were saved without tokenizers (they are written above): record them in model_index.json."""
    import json

    index = json.loads((directory / "model_index.json").read_text())
    index.update({name: ["transformers", "PreTrainedTokenizerFast"] for name in names})
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))


def captioned_rgb_images(directory: Path, count: int = 8) -> Path:
    """8x8 RGB images, each with a caption in <stem>.txt (dataset=image_folder dataset.captions=true)."""
    from PIL import Image

    captions = ["a red square", "a blue circle", "a dark square", "a red circle"]
    directory.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (30 * i, 255 - 30 * i, 90)).save(directory / f"{i}.png")
        (directory / f"{i}.txt").write_text(captions[i % len(captions)])
    return directory
