"""SD3, FLUX.1 and Qwen-Image teachers: the adapter's velocity is the transformer called as its own
diffusers pipeline calls it (packing, ids, timestep scale, prompt inputs from ``encode_prompt``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline, QwenImagePipeline, StableDiffusion3Pipeline

from distill.core.conditioning import POOLED, PROMPT_MASK, PROMPTS, conditioned, table_rows, tile
from distill.teachers import pipeline_prompts
from distill.teachers.checkpoint import TeacherCheckpointError
from distill.teachers.diffusers_dir import encode_prompt_table, load_diffusers_teacher
from distill.teachers.transformers import pack, unpack
from tests.teachers.tiny_text_transformers import (
    save_flux_pipeline,
    save_qwen_pipeline,
    save_sd3_pipeline,
)

PROMPTS_USED = ["a red square", "a blue circle", "a dark red circle square"]
SAVERS = {"sd3": save_sd3_pipeline, "flux": save_flux_pipeline, "qwen": save_qwen_pipeline}
PIPELINES = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline, "qwen": QwenImagePipeline}


@pytest.fixture(autouse=True)
def encode_on_cpu(monkeypatch):
    """The comparisons below are exact: keep the encoders in float32 on the CPU even where a GPU is."""
    monkeypatch.setattr(pipeline_prompts, "encoder_device", lambda: torch.device("cpu"))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    return {name: save(root / name) for name, save in SAVERS.items()}


def by_hand(family: str, pipe, x, s, prompts: list[str]):
    """The pipeline's own transformer call for latents ``x`` at sigma ``s`` (vae=None: scale factor 8)."""
    b, c, h, w = x.shape
    t = 1000 * s  # the scheduler's timesteps are 1000 sigma
    if family == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=8
        )
        return pipe.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
    if family == "flux":
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, max_sequence_length=8)
        guidance = torch.full((b,), 3.5) if pipe.transformer.config.guidance_embeds else None
        out = pipe.transformer(
            hidden_states=pipe._pack_latents(x, b, c, h, w),
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
        ).sample
        return pipe._unpack_latents(out, h * 8, w * 8, 8)
    embeds, mask = pipe.encode_prompt(prompts, max_sequence_length=8)
    out = pipe.transformer(
        hidden_states=pipe._pack_latents(x.unsqueeze(2), b, c, h, w),
        timestep=t / 1000,
        encoder_hidden_states=embeds,
        encoder_hidden_states_mask=mask,
        img_shapes=[[(1, h // 2, w // 2)]] * b,
    ).sample
    return pipe._unpack_latents(out, h * 8, w * 8, 8)[:, :, 0]


@pytest.mark.parametrize("family", sorted(SAVERS))
def test_velocity_is_the_pipelines_own_transformer_call(pipelines, family):
    path = pipelines[family]
    teacher = load_diffusers_teacher(path, resolution=8, max_sequence_length=8)
    table = encode_prompt_table(PROMPTS_USED, teacher, None)
    assert teacher.data_shape == (1, 8, 8) and teacher.meta["class"] == type(teacher.model.net).__name__
    pipe = PIPELINES[family].from_pretrained(path, vae=None, local_files_only=True)
    torch.manual_seed(1)
    x, s = torch.randn(3, 1, 8, 8), torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad(), conditioned(table_rows(table, torch.arange(3))):
        ours = teacher.model(x, s)
    with torch.no_grad():
        theirs = by_hand(family, pipe, x, s, PROMPTS_USED)
        empty = by_hand(family, pipe, x, s, [""] * 3)
        unconditional = teacher.model(x, s)  # no condition open: the empty prompt
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unconditional, empty, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, unconditional)


def test_condition_tables_hold_each_familys_inputs(pipelines, tmp_path):
    keys = {}
    for family, path in pipelines.items():
        teacher = load_diffusers_teacher(path, resolution=8, max_sequence_length=8)
        table = encode_prompt_table(PROMPTS_USED, teacher, tmp_path / family)
        assert "prompt_encoder" not in teacher.__dict__  # released after the table
        keys[family] = set(table)
        again = encode_prompt_table(PROMPTS_USED, teacher, tmp_path / family)  # read back from the shards
        assert all(torch.equal(table[k], again[k]) for k in table)
        assert list((tmp_path / family).rglob("*.safetensors"))
        tiled = tile(table_rows(table, torch.tensor([0, 1])), 4)
        assert all(v.shape[0] == 4 for v in tiled.values())
    assert keys == {"sd3": {PROMPTS, POOLED}, "flux": {PROMPTS, POOLED}, "qwen": {PROMPTS, PROMPT_MASK}}


def test_qwen_padding_is_masked_out(pipelines):
    """Tables are padded to a common length and trimmed to the longest prompt: neither changes the output."""
    teacher = load_diffusers_teacher(pipelines["qwen"], resolution=8, max_sequence_length=8)
    rows = table_rows(encode_prompt_table(PROMPTS_USED, teacher, None), torch.arange(3))
    padded = {
        PROMPTS: torch.nn.functional.pad(rows[PROMPTS], (0, 0, 0, 5)),
        PROMPT_MASK: torch.nn.functional.pad(rows[PROMPT_MASK], (0, 5)),
    }
    x, s = torch.randn(3, 1, 8, 8), torch.full((3,), 0.7)
    with torch.no_grad():
        with conditioned(rows):
            short = teacher.model(x, s)
        with conditioned(padded):
            long = teacher.model(x, s)
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)


def test_flux_dev_takes_its_guidance_as_an_input(tmp_path):
    path = save_flux_pipeline(tmp_path / "dev", guidance_embeds=True)
    teacher = load_diffusers_teacher(path, resolution=8, max_sequence_length=8)
    assert teacher.model.embedded_guidance == 3.5
    x, s = torch.randn(2, 1, 8, 8), torch.full((2,), 0.6)
    pipe = FluxPipeline.from_pretrained(path, vae=None, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(x, s), by_hand("flux", pipe, x, s, ["", ""]), rtol=1e-5, atol=1e-5)
        other = load_diffusers_teacher(path, resolution=8, embedded_guidance=1.0, max_sequence_length=8)
        assert not torch.allclose(other.model(x, s), teacher.model(x, s))
    with pytest.raises(TeacherCheckpointError, match="guidance-distilled"):
        load_diffusers_teacher(save_flux_pipeline(tmp_path / "plain"), resolution=8, embedded_guidance=3.5)


def test_packing_round_trips_and_odd_sizes_are_refused(pipelines):
    x = torch.randn(2, 3, 4, 6)
    assert torch.equal(unpack(pack(x), 3, 4, 6), x)
    with pytest.raises(TeacherCheckpointError, match="multiple of 2"):
        load_diffusers_teacher(pipelines["flux"], resolution=7)


def test_other_text_to_image_transformers_are_refused_naming_the_supported_ones(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImageTransformer2DModel

    HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=[8, 8],
        text_emb_dim=8,
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(2, 2, 4),
        max_resolution=(8, 8),
        llama_layers=[0],
    ).save_pretrained(tmp_path / "transformer")
    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(TeacherCheckpointError, match="FluxTransformer2DModel"):
        load_diffusers_teacher(tmp_path, resolution=8)
