"""experiment=bezier_fresh_digits: Bezier distillation into a student that copies no teacher."""

from __future__ import annotations

import json

import pytest
import torch

from distill.build import build_datamodule, build_module, build_teacher
from distill.train import train
from tests.conftest import QUICK_RUN_ONE_NFE, compose_config


@pytest.mark.parametrize("method", ["bezier", "bezier_single"])
def test_experiment_sets_a_fresh_student_and_its_budget(cache_dir, tmp_path, method):
    cfg = compose_config("train", ["experiment=bezier_fresh_digits", f"method={method}"], tmp_path)
    assert cfg.student.init == "fresh" and cfg.train.max_steps == 4500
    assert cfg.method.optimizer.lr == pytest.approx(1e-3) and cfg.eval.num_samples == 10000
    assert (cfg.method.objective.teachers is None) == (method == "bezier_single")


def test_experiment_starts_from_new_weights_and_runs(cache_dir, tmp_path):
    cfg = compose_config(
        "train", ["experiment=bezier_fresh_digits", "method=bezier_single", *QUICK_RUN_ONE_NFE], tmp_path
    )
    teacher = build_teacher(cfg, build_datamodule(cfg))
    student = build_module(cfg, teacher).student.state_dict()
    shared = [k for k, v in teacher.model.state_dict().items() if k in student and student[k].shape == v.shape]
    assert shared and not any(
        torch.equal(student[k], teacher.model.state_dict()[k]) for k in shared if k.endswith("conv1.weight")
    )
    train(cfg)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert any(r["model"] == "student" and r["metric"] == "fd_digits" for r in rows)
