"""``student.guidance_range`` end to end: a class-conditional run trains a guidance-input student,
``distill-sample guidance=`` samples it at any w, ``distill-export guidance=`` folds w into a plain
diffusers UNet that reproduces those samples; wrong combinations fail with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_module, build_teacher
from distill.errors import CheckpointError, ConfigError
from distill.export import SAMPLER_NAME, export_run
from distill.sample import sample_export, sample_run
from distill.students.guidance_input import GUIDANCE_INPUT_METHODS
from distill.train import train
from tests.conftest import TINY_UNET, compose_config, train_tiny_teacher
from tests.helpers.runs import TINY_RUN, run


@pytest.fixture(scope="module")
def conditional_teacher(cache_dir, tmp_path_factory) -> Path:
    from distill.data import DataModule

    dm = DataModule(name="digits", batch_size=64)
    dm.setup()
    return train_tiny_teacher(
        tmp_path_factory.mktemp("cond") / "teacher", dm.train_tensor(), {**TINY_UNET, "num_classes": 10}, steps=20
    )


@pytest.fixture(scope="module")
def guidance_run(conditional_teacher, tmp_path_factory) -> Path:
    return run(
        tmp_path_factory.mktemp("guided"),
        "method=consistency",
        f"teacher.path={conditional_teacher}",
        "teacher.guidance=2.0",
        "student.guidance_range=[1,4]",
        "method.optimizer.lr=1e-2",  # two steps: enough for the w embedding to move off zero
    )


def test_export_and_sample_round_trip_at_a_chosen_guidance(guidance_run, cache_dir, tmp_path):
    seeds = list(range(6))
    at_3 = sample_run(guidance_run, 1, seeds, str(cache_dir), guidance=3.0)
    at_1 = sample_run(guidance_run, 1, seeds, str(cache_dir), guidance=1.0)
    assert not torch.allclose(at_3, at_1)  # the student reads w
    out = export_run(guidance_run, tmp_path / "w3", 1, str(cache_dir), guidance=3.0)
    assert json.loads((out / SAMPLER_NAME).read_text())["guidance"] == 3.0
    torch.testing.assert_close(sample_export(out, seeds), at_3, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sample_export(out, seeds, guidance=3.0), at_3, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="export the run again with distill-export guidance="):
        sample_export(out, seeds, guidance=1.5)
    # No guidance=: the teacher.guidance the run evaluated at.
    default = export_run(guidance_run, tmp_path / "default", 1, str(cache_dir))
    at_2 = sample_run(guidance_run, 1, seeds, str(cache_dir), guidance=2.0)
    torch.testing.assert_close(sample_export(default, seeds), at_2, rtol=1e-4, atol=1e-4)


def test_guidance_needs_a_guidance_input_method_and_a_conditional_teacher(
    compose_train, conditional_teacher, cache_dir, tmp_path
):
    cfg = compose_train("method=dmd2", f"teacher.path={conditional_teacher}", "student.guidance_range=[1,4]")
    with pytest.raises(ConfigError, match="method=dmd2 cannot train a student over a guidance range.*consistency"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))
    cfg = compose_train("method=consistency", "student.guidance_range=[1,4]")  # the cached digits teacher
    with pytest.raises(ConfigError, match="needs a class-conditional teacher"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))
    cfg = compose_train("method=consistency", "student.guidance_lr_scale=0")
    with pytest.raises(ConfigError, match="student.guidance_lr_scale=0"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))
    plain = run(tmp_path / "plain", "method=progressive", f"teacher.path={conditional_teacher}")
    with pytest.raises(ConfigError, match="has no guidance input"):
        sample_run(plain, 1, [0], str(cache_dir), guidance=2.0)
    with pytest.raises(ConfigError, match="has no guidance input"):
        export_run(plain, tmp_path / "export", 1, str(cache_dir), guidance=2.0)


def test_the_listed_guidance_input_methods_are_what_the_method_configs_build(compose_train):
    from distill.build import build_method

    names = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "method").glob("*.yaml"))
    takes = [name for name in names if build_method(compose_train(f"method={name}")).guidance_input]
    assert takes == sorted(GUIDANCE_INPUT_METHODS)


def test_resuming_with_other_optimizer_groups_names_the_setting(conditional_teacher, tmp_path):
    """A guidance run trained with the embedding at the student's lr (one optimizer group) cannot
    resume with it apart (two groups): the error says which setting to restore."""
    settings = [f"teacher.path={conditional_teacher}", "method=consistency", "student.guidance_range=[1,4]"]
    first = run(tmp_path / "run", *settings, "student.guidance_lr_scale=1")
    longer = [*TINY_RUN, *settings, "train.max_steps=4", "student.guidance_lr_scale=30"]
    with pytest.raises(CheckpointError, match="student.guidance_lr_scale=1"):
        train(compose_config("train", longer, first))
