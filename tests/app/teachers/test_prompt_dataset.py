"""``dataset=prompts``: prompts without images for data-free distillation of a text teacher. The
teacher's own samples stand in for images (made once, cached) where a method noises data and as the
evaluation reference; methods that need real images, empty prompt files and teachers that take no
prompts are refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_teacher
from distill.data.errors import DatasetError
from distill.errors import ConfigError
from distill.train import train
from tests.helpers.text_pipeline import save_text_pipeline

PROMPTS = ["a red square", "a blue circle", "a dark square"]


@pytest.fixture(scope="module")
def text_pipe(tmp_path_factory) -> Path:
    return save_text_pipeline(tmp_path_factory.mktemp("prompts") / "pipe")


def prompt_overrides(pipe: Path, *extra: str) -> list[str]:
    return [
        "teacher=diffusers",
        f"teacher.path={pipe}",
        "dataset=prompts",
        f"dataset.prompts=[{','.join(PROMPTS)}]",
        "dataset.resolution=8",
        "dataset.channels=1",
        "dataset.repeats=2",
        "dataset.sample_steps=2",
        "eval.metric=sw",
        "train.batch_size=2",
        "teacher.guidance=2.0",
        *extra,
    ]


def test_a_prompt_file_reads_one_prompt_a_line_and_an_empty_one_fails(tmp_path):
    from distill.data import DataModule

    file = tmp_path / "prompts.txt"
    file.write_text("a red square\n\n  a blue circle  \n")
    dm = DataModule("prompts", batch_size=2, path=file, resolution=8, channels=1, repeats=2)
    assert dm.captions == ["a red square", "a blue circle"]
    assert dm.train_labels().tolist() == [0, 1, 0, 1]
    x, y = dm.train_dataset[3]
    assert x.shape == (1, 8, 8) and int(y) == 1
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DatasetError, match="holds no prompts"):
        DataModule("prompts", batch_size=2, path=tmp_path / "empty.txt", resolution=8).setup()
    with pytest.raises(DatasetError, match="one of dataset.path"):
        DataModule("prompts", batch_size=2, resolution=8)
    with pytest.raises(DatasetError, match="is not a file"):
        DataModule("prompts", batch_size=2, path=tmp_path / "missing.txt", resolution=8).setup()


def test_teacher_samples_stand_in_for_images_and_are_cached(compose_train, text_pipe):
    cfg = compose_train(*prompt_overrides(text_pipe, "method=progressive"))
    dm = build_datamodule(cfg)
    teacher = build_teacher(cfg, dm)
    x, labels = dm.train_tensor(), dm.train_labels()
    assert x.shape == (6, 1, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1, 2] and x.abs().sum() > 0
    assert teacher.prompt_table.shape[0] == 3
    assert not torch.allclose(x[0], x[3])  # a prompt's two rows: two noises, two samples
    torch.testing.assert_close(dm.reference_samples(), x)  # scored against the same samples
    assert list((Path(cfg.paths.cache) / "teacher_samples").rglob("*.safetensors"))
    again = build_datamodule(cfg)
    build_teacher(cfg, again)
    assert torch.equal(again.train_tensor(), x)  # read back


def test_data_free_methods_skip_the_samples_they_do_not_read(compose_train, text_pipe):
    cfg = compose_train(*prompt_overrides(text_pipe, "method=bezier_single", "eval.reference_stats=/stats.npz"))
    dm = build_datamodule(cfg)
    build_teacher(cfg, dm)
    assert dm.train_tensor().abs().sum() == 0  # a shape only: nothing was solved
    with pytest.raises(DatasetError, match="eval.reference_stats"):
        build_datamodule(cfg).reference_samples()


@pytest.mark.parametrize("method", ["gdd", "ict", "sct", "dmd2 method.objective.gan_weight=0.01"])
def test_methods_that_need_real_images_are_refused(compose_train, text_pipe, method):
    name, *extra = method.split()
    cfg = compose_train(*prompt_overrides(text_pipe, f"method={name}", *extra))
    with pytest.raises(ConfigError, match="compares with real images.*dataset=prompts"):
        build_teacher(cfg, build_datamodule(cfg))


def test_a_teacher_without_prompts_is_refused(compose_train):
    cfg = compose_train(
        "dataset=prompts",
        "dataset.prompts=[a]",
        "dataset.resolution=8",
        "dataset.channels=1",
        "teacher.path=${paths.cache}/teachers/digits",
        "eval.metric=sw",
    )
    with pytest.raises(ConfigError, match="needs a text-conditional teacher"):
        build_teacher(cfg, build_datamodule(cfg))


@pytest.mark.parametrize("method", ["progressive", "dmd2 method.objective.gan_weight=0"])
def test_data_free_distillation_runs_on_prompts(compose_train, text_pipe, method):
    name, *extra = method.split()
    cfg = compose_train(*prompt_overrides(text_pipe, f"method={name}", *extra, "debug=fast"))
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"} and all(r["value"] == r["value"] for r in rows)


def test_the_dataset_schema_takes_the_prompt_keys_from_the_datamodule(compose_train, text_pipe):
    from distill.config_schema import validate_train_config

    validate_train_config(compose_train(*prompt_overrides(text_pipe)))
    with pytest.raises(ConfigError, match="dataset.repeats=0 must be >= 1"):
        validate_train_config(compose_train(*prompt_overrides(text_pipe), "dataset.repeats=0"))
