"""Bring your own teacher: tiny diffusers UNets (epsilon on a DDPM schedule, and flow matching),
saved and loaded back from disk, distil end to end with trajectory and distribution methods,
as full students and as LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.evaluation.results import MEMORY_METRICS
from distill.train import train
from tests.teachers.test_diffusers_dir import save_flow_model, save_pipeline


@pytest.mark.parametrize(("layout", "method", "student"), [
    ("ddpm_epsilon", "progressive", "copy_of_teacher"),
    ("ddpm_epsilon", "dmd2", "lora"),
    ("flow", "arcflow", "lora"),
    ("flow", "consistency", "lora"),
    ("flow", "gdd", "copy_of_teacher"),
])
def test_diffusers_teacher_distils_end_to_end(compose_train, tmp_path, layout, method, student):
    path = tmp_path / layout
    save_pipeline(path) if layout == "ddpm_epsilon" else save_flow_model(path)
    cfg = compose_train(f"method={method}", "debug=fast", "teacher=diffusers", f"teacher.path={path}",
                        f"student={student}")
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    student_nfes = {r["nfe"] for r in rows if r["model"] == "student" and r["metric"] not in MEMORY_METRICS}
    assert student_nfes == {1, 2, 4}
