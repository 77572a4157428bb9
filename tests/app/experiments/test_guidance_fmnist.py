"""experiments/guidance_fmnist.py: its table of teacher and student rows per guidance scale."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.experiments import load_experiment


def load_script():
    return load_experiment("guidance_fmnist")


def test_one_line_per_scale_with_the_teacher_and_each_student_nfe(tmp_path):
    script = load_script()
    rows = [
        {"model": "teacher", "sampler": "heun", "nfe": 31, "metric": "fd_fmnist", "value": 20.0},
        {"model": "teacher", "sampler": "heun", "nfe": 31, "metric": "class_accuracy", "value": 0.9},
        {"model": "student", "sampler": "progressive", "nfe": 1, "metric": "fd_fmnist", "value": 30.0},
        {"model": "student", "sampler": "progressive", "nfe": 1, "metric": "class_accuracy", "value": 0.8},
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    table = script.rows_at(tmp_path / "results.json")
    text = script.markdown("progressive", 1.0, 4.0, {1.0: table, 2.5: table}, [1, 2], 16)
    lines = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2.5 ")]
    assert lines[0] == "| 1 | 20.00 | 90.0% | 30.00 | 80.0% | nan | nan% |"  # no 2-NFE row: nan
    assert len(lines) == 2 and "over w in [1, 4]" in text
    assert script.parse(["method=pcm", "train.max_steps=3"]) == ({"method": "pcm"}, ["train.max_steps=3"])


def test_teacher_rows_are_kept_under_resume_only_for_the_same_settings(tmp_path, monkeypatch):
    script = load_script()
    calls = []

    def fake_run(cmd, log, what):
        calls.append(cmd)
        at = Path(next(arg for arg in cmd if arg.startswith("hydra.run.dir=")).split("=", 1)[1])
        at.mkdir(parents=True, exist_ok=True)
        rows = [{"model": "teacher", "sampler": "heun", "nfe": 15, "metric": "fd_fmnist", "value": 5.0 * len(calls)}]
        (at / "results.json").write_text(json.dumps(rows))

    monkeypatch.setattr(script, "run", fake_run)
    at, settings = tmp_path / "w2" / "teacher", ["teacher.path=/t", "eval.teacher_nfes=[16]"]
    first, when = script.teacher_rows(at, 2.0, settings, resume=False)
    assert first[("teacher", 15)]["fd_fmnist"] == 5.0 and "guidance=2.0" in calls[0] and when == script.INVOCATION
    kept, _ = script.teacher_rows(at, 2.0, settings, resume=True)
    assert kept == first and len(calls) == 1  # same teacher and settings: not scored again
    other, _ = script.teacher_rows(at, 2.0, ["teacher.path=/t", "eval.teacher_nfes=[8]"], resume=True)
    assert other[("teacher", 15)]["fd_fmnist"] == 10.0 and len(calls) == 2  # other settings: scored anew
    script.teacher_rows(at, 2.0, ["teacher.path=/t", "eval.teacher_nfes=[8]"], resume=False)
    assert len(calls) == 3  # without resume every row comes from this invocation


def test_the_student_is_trained_anew_not_resumed_from_an_earlier_invocation(tmp_path, monkeypatch):
    script = load_script()
    stale = tmp_path / "student" / "checkpoints" / "last.ckpt"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier invocation's student")
    seen = []
    monkeypatch.setattr(script, "run", lambda cmd, log, what: seen.append(stale.exists()))
    script.train_anew(["distill.train"], tmp_path / "student", tmp_path / "train.log", "student")
    assert seen == [False]
