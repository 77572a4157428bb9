"""``distill-export`` and ``distill-sample``: an exported student loads with diffusers' own classes,
without this project importable, and reproduces the run's samples; LoRA students also export their
adapters; students no scheduler can follow are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.errors import ConfigError
from distill.evaluation.noise import seeded_noise
from distill.export import SAMPLER_NAME, export_run
from distill.sample import sample_export, sample_run, write_samples
from tests.app.test_init_from import run

DIFFUSERS_ONLY = r'''
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
'''


@pytest.fixture(scope="module")
def pd_run(cache_dir, tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("pd"), "method=progressive")


@pytest.mark.parametrize("nfe", [1, 2])
def test_export_reproduces_the_run_in_plain_diffusers(pd_run, cache_dir, tmp_path, nfe):
    out = export_run(pd_run, tmp_path / "export", nfe, str(cache_dir))
    assert {p.name for p in out.iterdir()} == {"unet", "scheduler", SAMPLER_NAME}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    seeds = list(range(5))
    save_file({"noise": seeded_noise(seeds, (1, 8, 8))}, tmp_path / "noise.safetensors")
    subprocess.run([sys.executable, "-c", DIFFUSERS_ONLY, str(out), str(tmp_path)], check=True, cwd=tmp_path)
    exported = load_file(tmp_path / "out.safetensors")["x"]
    torch.testing.assert_close(exported, sample_run(pd_run, nfe, seeds, str(cache_dir)), rtol=1e-4, atol=1e-4)


def test_lora_consistency_student_exports_merged_and_as_adapters(cache_dir, tmp_path):
    run_dir = run(tmp_path / "run", "method=consistency", "student=lora")
    out = export_run(run_dir, tmp_path / "export", 2, str(cache_dir))
    sampler = json.loads((out / SAMPLER_NAME).read_text())
    assert sampler["renoise"] and json.loads((out / "scheduler" / "scheduler_config.json").read_text())[
        "stochastic_sampling"]
    seeds = [3, 7, 11]
    # The export's stochastic scheduler, fed per-seed generators, re-noises exactly as the run does.
    torch.testing.assert_close(sample_export(out, seeds), sample_run(run_dir, 2, seeds, str(cache_dir)),
                               rtol=1e-4, atol=1e-4)
    # The adapters on their base equal the merged network.
    from diffusers import UNet2DModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    adapter = json.loads((out / "lora" / "adapter_config.json").read_text())
    base = UNet2DModel.from_pretrained(out / "lora" / "base", use_safetensors=True)
    config = LoraConfig(r=adapter["r"], lora_alpha=adapter["lora_alpha"], target_modules=adapter["target_modules"])
    adapted = inject_adapter_in_model(config, base)
    assert not set_peft_model_state_dict(adapted, load_file(out / "lora" / "adapter_model.safetensors")).unexpected_keys
    merged = UNet2DModel.from_pretrained(out / "unet", use_safetensors=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([700.0, 300.0])
    with torch.no_grad():
        torch.testing.assert_close(adapted(x, t).sample, merged(x, t).sample, rtol=1e-4, atol=1e-5)


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
