"""``distill-export`` and ``distill-sample``: an exported student loads with diffusers' own classes,
without this project importable, and reproduces the run's samples; LoRA students also export their
adapters in diffusers' LoRA format, which diffusers' own loaders apply to the base model; students no
scheduler can follow are refused."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from distill.core.conditioning import PROMPTS, conditioned
from distill.errors import ConfigError
from distill.evaluation.noise import seeded_noise
from distill.export import LORA_WEIGHTS, SAMPLER_NAME, export_run, write_lora
from distill.runs import load_run_module
from distill.sample import sample_export, sample_run, write_samples
from distill.students.lora import add_lora
from tests.helpers.runs import run

DIFFUSERS_ONLY = r"""
import json, sys
sys.modules["distill"] = None  # this project must not be needed
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

export, io = sys.argv[1], sys.argv[2]
sampler = json.load(open(f"{export}/distill_sampler.json"))
unet = UNet2DModel.from_pretrained(f"{export}/unet", use_safetensors=True).eval()
scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(f"{export}/scheduler")
scheduler.set_timesteps(sigmas=sampler["sigmas"][:-1])
x = sampler["initial_noise_scale"] * load_file(f"{io}/noise.safetensors")["noise"]
with torch.no_grad():
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t.expand(x.shape[0])).sample, t, x).prev_sample
save_file({"x": x.contiguous()}, f"{io}/out.safetensors")
"""


@pytest.fixture(scope="module")
def pd_run(cache_dir, tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("pd"), "method=progressive")


@pytest.mark.parametrize("nfe", [pytest.param(1, marks=pytest.mark.slow), 2])  # one diffusers subprocess in make test
def test_export_reproduces_the_run_in_plain_diffusers(pd_run, cache_dir, tmp_path, nfe):
    out = export_run(pd_run, tmp_path / "export", nfe, str(cache_dir))
    assert {p.name for p in out.iterdir()} == {"unet", "scheduler", SAMPLER_NAME}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    seeds = list(range(5))
    save_file({"noise": seeded_noise(seeds, (1, 8, 8))}, tmp_path / "noise.safetensors")
    subprocess.run([sys.executable, "-c", DIFFUSERS_ONLY, str(out), str(tmp_path)], check=True, cwd=tmp_path)
    exported = load_file(tmp_path / "out.safetensors")["x"]
    torch.testing.assert_close(exported, sample_run(pd_run, nfe, seeds, str(cache_dir)), rtol=1e-4, atol=1e-4)


def test_lora_student_of_a_class_without_lora_loader_exports_merged(cache_dir, tmp_path, caplog):
    run_dir = run(tmp_path / "run", "method=consistency", "student=lora")
    with caplog.at_level(logging.INFO, logger="distill.export"):
        out = export_run(run_dir, tmp_path / "export", 2, str(cache_dir))
    assert "UNet2DModel has no LoRA loader" in caplog.text and not (out / "lora").exists()
    sampler = json.loads((out / SAMPLER_NAME).read_text())
    assert (
        sampler["renoise"]
        and json.loads((out / "scheduler" / "scheduler_config.json").read_text())["stochastic_sampling"]
    )
    seeds = [3, 7, 11]
    # The export's stochastic scheduler, fed per-seed generators, re-noises exactly as the run does.
    torch.testing.assert_close(
        sample_export(out, seeds), sample_run(run_dir, 2, seeds, str(cache_dir)), rtol=1e-4, atol=1e-4
    )


DIFFUSERS_LORA = r"""
import sys
sys.modules["distill"] = None  # this project must not be needed
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, PreTrainedTokenizerFast

pipe_dir, export, io = sys.argv[1:4]
inputs = load_file(f"{io}/inputs.safetensors")
def velocity(unet):
    with torch.no_grad():
        return unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["prompts"]).sample
# the model's own loader
unet = UNet2DConditionModel.from_pretrained(f"{pipe_dir}/unet", use_safetensors=True).eval()
unet.load_lora_adapter(f"{export}/lora", weight_name="pytorch_lora_weights.safetensors", prefix="unet")
# and the pipeline's
pipe = StableDiffusionPipeline(
    vae=None, text_encoder=CLIPTextModel.from_pretrained(f"{pipe_dir}/text_encoder"),
    tokenizer=PreTrainedTokenizerFast.from_pretrained(f"{pipe_dir}/tokenizer"),
    unet=UNet2DConditionModel.from_pretrained(f"{pipe_dir}/unet", use_safetensors=True).eval(),
    scheduler=FlowMatchEulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
    requires_safety_checker=False)
pipe.load_lora_weights(f"{export}/lora")
save_file({"model": velocity(unet), "pipeline": velocity(pipe.unet)}, f"{io}/out.safetensors")
"""


@pytest.mark.slow  # 12 s: a text pipeline saved and reloaded by diffusers
def test_lora_text_student_exports_adapters_diffusers_loads(cache_dir, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tests.helpers.text_pipeline import captioned_images, save_text_pipeline

    pipe = save_text_pipeline(tmp_path / "pipe")
    FlowMatchEulerDiscreteScheduler().save_pretrained(pipe / "scheduler")  # a flow teacher exports
    run_dir = run(
        tmp_path / "run",
        "method=progressive",
        "student=lora",
        "teacher=diffusers",
        f"teacher.path={pipe}",
        "dataset=image_folder",
        f"dataset.path={captioned_images(tmp_path / 'images')}",
        "dataset.resolution=8",
        "dataset.channels=1",
        "dataset.captions=true",
        "eval.metric=sw",
        "train.batch_size=4",
    )
    out = export_run(run_dir, tmp_path / "export", 1, str(cache_dir))
    assert sorted(p.name for p in (out / "lora").iterdir()) == ["pytorch_lora_weights.safetensors"]
    module = load_run_module(run_dir, str(cache_dir))
    student = module.method.sampling_plan(module.sampling_student(), 1).network
    inputs = {
        "x": torch.randn(2, 1, 8, 8),
        "t": torch.tensor([900.0, 350.0]),
        "prompts": module.teacher.prompt_table[[0, 1]],
    }
    with torch.no_grad(), conditioned({PROMPTS: inputs["prompts"]}):
        expected = student(inputs["x"], inputs["t"] / 1000)
    save_file(inputs, tmp_path / "inputs.safetensors")
    subprocess.run([sys.executable, "-c", DIFFUSERS_LORA, str(pipe), str(out), str(tmp_path)], check=True, cwd=tmp_path)
    loaded = load_file(tmp_path / "out.safetensors")
    teacher_out = module.teacher.model.net(inputs["x"], inputs["t"], encoder_hidden_states=inputs["prompts"]).sample
    assert not torch.allclose(expected, teacher_out, atol=1e-5)  # the adapters matter
    torch.testing.assert_close(loaded["model"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded["pipeline"], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="text-conditional and the export holds no prompts"):
        sample_export(out, [0])


DIFFUSERS_TRANSFORMER_LORA = r"""
import sys
sys.modules["distill"] = None
import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file, save_file

export, io = sys.argv[1:3]
inputs = load_file(f"{io}/inputs.safetensors")
net = SD3Transformer2DModel.from_pretrained(f"{export}/lora/base", use_safetensors=True).eval()
net.load_lora_adapter(f"{export}/lora", weight_name="pytorch_lora_weights.safetensors", prefix="transformer")
with torch.no_grad():
    out = net(inputs["x"], encoder_hidden_states=inputs["prompts"], pooled_projections=inputs["pooled"],
              timestep=inputs["t"]).sample
save_file({"out": out}, f"{io}/out.safetensors")
"""


@pytest.mark.slow  # a second subprocess importing diffusers: ~10 s
def test_lora_transformer_exports_adapters_and_its_trained_base(tmp_path):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()
    add_lora(net, rank=2, alpha=4, targets=["to_q", "to_k", "to_v"], train_fully=["proj_out.*"])
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_B." in name or name.startswith("proj_out"):
                p.normal_(0, 0.1)  # trained adapters, and a fully trained head
    note = write_lora(net, None, tmp_path / "export")
    assert "lora/base/" in note
    meta = safe_open(str(tmp_path / "export" / "lora" / LORA_WEIGHTS), "pt").metadata()
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 2 and config["transformer.lora_alpha"] == 4.0
    inputs = {
        "x": torch.randn(2, 4, 8, 8),
        "prompts": torch.randn(2, 3, 8),
        "pooled": torch.randn(2, 8),
        "t": torch.tensor([900.0, 100.0]),
    }
    save_file(inputs, tmp_path / "inputs.safetensors")
    script = DIFFUSERS_TRANSFORMER_LORA
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "export"), str(tmp_path)], check=True, cwd=tmp_path)
    with torch.no_grad():
        expected = net(
            inputs["x"],
            encoder_hidden_states=inputs["prompts"],
            pooled_projections=inputs["pooled"],
            timestep=inputs["t"],
        ).sample
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["out"], expected, rtol=1e-4, atol=1e-5)


def test_samplers_no_scheduler_follows_and_existing_outputs_are_refused(cache_dir, tmp_path, pd_run):
    arc = run(tmp_path / "arc", "method=arcflow")
    with pytest.raises(ConfigError, match="cannot follow"):
        export_run(arc, tmp_path / "export", 2, str(cache_dir))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        export_run(pd_run, tmp_path / "taken", 1, str(cache_dir))


def test_sample_writes_a_grid_or_one_png_per_seed(pd_run, cache_dir, tmp_path):
    samples = sample_run(pd_run, 1, [0, 1, 2], str(cache_dir))
    assert write_samples(samples, [0, 1, 2], tmp_path / "g", "grid", "1 NFE").name == "grid.png"
    folder = write_samples(samples, [0, 1, 2], tmp_path / "f", "folder", "")
    assert sorted(p.name for p in folder.iterdir()) == ["seed000000.png", "seed000001.png", "seed000002.png"]
