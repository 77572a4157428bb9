"""Latent-space teachers: a pipeline with a VAE trains on encoded images (cached), evaluates and
samples decoded pixels, and exports with its VAE so plain diffusers decodes the same images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from distill.build import build_datamodule, build_teacher
from distill.export import export_run
from distill.sample import sample_export, sample_run
from tests.helpers.diffusers_models import TINY, tiny_vae
from tests.helpers.runs import run


def save_latent_pipeline(directory: Path) -> Path:
    torch.manual_seed(0)
    tiny_vae(1, 2).save_pretrained(directory / "vae")
    UNet2DModel(**{**TINY, "sample_size": 4, "in_channels": 2, "out_channels": 2}).save_pretrained(directory / "unet")
    FlowMatchEulerDiscreteScheduler().save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline"}))
    return directory


@pytest.fixture(scope="module")
def latent_pipeline(tmp_path_factory) -> Path:
    return save_latent_pipeline(tmp_path_factory.mktemp("latent") / "pipe")


def test_training_set_is_encoded_once_and_cached(compose_train, latent_pipeline):
    cfg = compose_train("teacher=diffusers", f"teacher.path={latent_pipeline}")
    dm = build_datamodule(cfg)
    teacher = build_teacher(cfg, dm)
    assert teacher.data_shape == (2, 4, 4) and dm.data_shape == (1, 8, 8)
    latents = dm.train_tensor()
    assert latents.shape[1:] == (2, 4, 4) and len(dm.train_labels()) == len(latents)
    with torch.no_grad():
        torch.testing.assert_close(
            latents[:4], teacher.codec.encode(build_datamodule(cfg).train_tensor()[:4]), rtol=1e-4, atol=1e-5
        )
    assert list((Path(cfg.paths.cache) / "latents").rglob("*.safetensors"))
    dm2 = build_datamodule(cfg)
    build_teacher(cfg, dm2)  # the second time from the cache, bit for bit
    assert torch.equal(dm2.train_tensor(), latents)


def test_latent_student_trains_evaluates_samples_and_exports_in_pixels(cache_dir, latent_pipeline, tmp_path):
    run_dir = run(tmp_path / "run", "method=progressive", "teacher=diffusers", f"teacher.path={latent_pipeline}")
    rows = json.loads((run_dir / "results.json").read_text())
    assert any(r["model"] == "student" and r["metric"] == "fd_digits" for r in rows)  # scored as 8x8 digits
    pixels = sample_run(run_dir, 1, [0, 1, 2], str(cache_dir))
    assert pixels.shape == (3, 1, 8, 8) and pixels.abs().max() <= 1
    out = export_run(run_dir, tmp_path / "export", 1, str(cache_dir))
    assert (out / "vae" / "config.json").is_file()
    torch.testing.assert_close(sample_export(out, [0, 1, 2]), pixels, rtol=1e-4, atol=1e-4)
