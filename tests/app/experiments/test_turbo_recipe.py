"""The 2-step turbo recipe is a pair of configs: stage 2 starts from stage 1's student."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from distill.build import build_datamodule, build_module, build_teacher
from distill.errors import ConfigError
from distill.train import train
from tests.conftest import QUICK_RUN, compose_config


def test_stage_two_starts_from_stage_one_and_mixes_teacher_samples(cache_dir, tmp_path):
    stage1 = compose_config("train", ["experiment=turbo_digits_stage1", *QUICK_RUN], tmp_path / "stage1")
    assert stage1.method.name == "turbo_pcm" and stage1.method.objective.phases == 2
    train(stage1)
    cfg = compose_config(
        "train", ["experiment=turbo_digits_stage2", *QUICK_RUN, f"init_from={tmp_path / 'stage1'}"], tmp_path / "stage2"
    )
    assert cfg.method.name == "turbo_dmd2"
    assert cfg.method.objective.teacher_sample_fraction == 0.5 and cfg.method.objective.gan_backbone == "teacher"
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_teacher(cfg, dm))
    last = torch.load(tmp_path / "stage1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ema = {k.removeprefix("ema.copies.0."): v for k, v in last["state_dict"].items() if k.startswith("ema.copies.0.")}
    for name, p in module.student.state_dict().items():
        torch.testing.assert_close(p, ema[name])
    # stage 2's generator samples the warm start exactly as stage 1's PCM sampler does at 2 NFE
    pcm, noise = instantiate(stage1.method.objective), torch.randn(8, *dm.data_shape)
    with torch.no_grad():
        torch.testing.assert_close(module.method.sample(module.student, noise, 2), pcm.sample(module.student, noise, 2))
    train(cfg)
    assert (tmp_path / "stage2" / "results.json").is_file()


def test_stage_two_refuses_to_start_without_stage_one(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=turbo_digits_stage2", *QUICK_RUN], tmp_path / "stage2")
    with pytest.raises(ConfigError, match="experiment=turbo_digits_stage1: run that first"):
        train(cfg)
