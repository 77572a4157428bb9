"""``python -m distill.export_teacher``: a reflow run's student (the 2-rectified flow) becomes a teacher
directory that loads like a pretrained one and gives the run's own velocities; students that are no
plain velocity model are refused."""

from __future__ import annotations

import json

import pytest
import torch

from distill.errors import ConfigError
from distill.export_teacher import export_teacher
from distill.runs import load_run_module
from distill.teachers import load_teacher
from tests.helpers.runs import run


def test_reflow_student_exports_as_a_loadable_teacher(cache_dir, tmp_path):
    run_dir = run(tmp_path / "run", "method=reflow", "method.objective.distill=false")
    out = export_teacher(run_dir, tmp_path / "teacher_2rf", str(cache_dir))
    teacher = load_teacher(out)
    student = load_run_module(run_dir, str(cache_dir)).sampling_student().eval()
    x, s = torch.randn(4, 1, 8, 8), torch.rand(4)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, s), student(x, s))
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["source_method"] == "reflow" and meta["train_steps"] == 2 and meta["dataset"] == "test"
    with pytest.raises(ConfigError, match="already holds a teacher"):
        export_teacher(run_dir, out, str(cache_dir))
    assert export_teacher(run_dir, out, str(cache_dir), overwrite=True) == out


def test_flow_map_students_are_refused(cache_dir, tmp_path):
    run_dir = run(tmp_path / "run", "method=bezier_single")
    with pytest.raises(ConfigError, match="not a velocity model"):
        export_teacher(run_dir, tmp_path / "teacher", str(cache_dir))
