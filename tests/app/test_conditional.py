"""Class-conditional teachers: labels flow from the batch into every network call, classifier-free
guidance folds into the student, evaluation asks each seed for a class and scores whether the
sample shows it; wrong combinations fail before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_teacher
from distill.errors import ConfigError
from distill.train import train
from tests.conftest import TINY_UNET, train_tiny_teacher


@pytest.fixture(scope="module")
def conditional_teacher(cache_dir, tmp_path_factory) -> Path:
    from distill.data import DataModule

    dm = DataModule(name="digits", batch_size=64)
    dm.setup()
    return train_tiny_teacher(tmp_path_factory.mktemp("cond") / "teacher", dm.train_tensor(),
                              {**TINY_UNET, "num_classes": 10}, steps=20)


@pytest.mark.parametrize("method", ["dmd2", pytest.param("progressive", marks=pytest.mark.slow),
                                    pytest.param("arcflow", marks=pytest.mark.slow)])
def test_conditional_distillation_with_guidance_scores_class_accuracy(compose_train, conditional_teacher, method):
    cfg = compose_train(f"method={method}", "debug=fast", f"teacher.path={conditional_teacher}", "teacher.guidance=2.0")
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    accuracy = [r for r in rows if r["metric"] == "class_accuracy"]
    assert {r["model"] for r in accuracy} == {"teacher", "student"}
    assert all(0.0 <= r["value"] <= 1.0 for r in accuracy)


def test_labels_reach_the_teacher_inside_a_training_step(compose_train, conditional_teacher, monkeypatch):
    from distill.core import conditioning

    seen = []
    original = conditioning.labels_for
    monkeypatch.setattr("distill.nets.unet.labels_for", lambda x: seen.append(original(x)) or original(x))
    cfg = compose_train("method=progressive", "debug=fast", f"teacher.path={conditional_teacher}",
                        "eval.teacher=false", "eval.student_nfes=[1]")
    train(cfg)
    labelled = [c for c in seen if c is not None]
    assert labelled and all(c.dtype == torch.long and int(c.max()) < 10 for c in labelled)


def test_bad_conditioning_combinations_fail_early(compose_train, conditional_teacher):
    cfg = compose_train("teacher.guidance=2.0")  # the cached digits teacher is unconditional
    with pytest.raises(ConfigError, match="needs a conditional teacher"):
        build_teacher(cfg, build_datamodule(cfg))
    cfg = compose_train("dataset=moons", f"teacher.path={conditional_teacher}")
    with pytest.raises(ConfigError, match="conditioned on 10 classes but dataset=moons has no labels"):
        build_teacher(cfg, build_datamodule(cfg))


@pytest.mark.parametrize("method", ["reflow", "dmd"])
def test_methods_with_unlabelled_pair_sets_refuse_conditional_teachers(compose_train, conditional_teacher, method):
    from distill.build import build_module

    cfg = compose_train(f"method={method}", f"teacher.path={conditional_teacher}")
    with pytest.raises(ConfigError, match="carry no class labels"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))
