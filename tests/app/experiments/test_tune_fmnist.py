"""experiments/tune_fmnist.py: one validation-split run per value, and the value it chooses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.experiments import load_experiment


def load_script():
    return load_experiment("tune_fmnist")


def test_every_run_is_the_tables_run_plus_the_value_scored_on_the_validation_split(tmp_path: Path) -> None:
    tune = load_script()
    profile = tune.chosen_profile({"hardware": "cpu"}, "gpu")
    jobs = tune.tuning_jobs(
        profile, "sida", "method.optimizer.lr", ["1e-4", "1e-3"], 0, tmp_path, tmp_path, tmp_path, []
    )
    table_run = tune.training_job(profile, "sida", 0, tmp_path, tmp_path, tmp_path / "1e-4", []).cmd
    assert jobs[0].cmd == [*table_run, "method.optimizer.lr=1e-4", "dataset.reference_split=validation"]
    assert "method.objective.generator_start_step=39" in jobs[1].cmd  # the profile's per-method settings stay
    assert [j.dir for j in jobs] == [tmp_path / "1e-4" / "sida" / "s0", tmp_path / "1e-3" / "sida" / "s0"]
    assert not any("reference_split=test" in arg for j in jobs for arg in j.cmd)


def test_chooses_the_lowest_at_the_asked_nfe_and_tables_every_value(tmp_path: Path, monkeypatch) -> None:
    tune = load_script()
    fd = {"1e-4": {1: 90.0, 2: 50.0}, "1e-3": {1: 70.0, 2: 60.0}, "1e-2": None}  # None: the run failed
    seen = []

    def fake_run_all(profile, jobs, invocation):
        for value, job in zip(fd, jobs, strict=True):
            seen.append(job.cmd)
            job.dir.mkdir(parents=True, exist_ok=True)
            if fd[value] is not None:
                rows = [{"model": "student", "nfe": k, "metric": "fd_fmnist", "value": v} for k, v in fd[value].items()]
                rows.append({"model": "student", "nfe": 1, "metric": "precision", "value": 0.5})
                (job.dir / "results.json").write_text(json.dumps(rows))
                (job.dir / "done").touch()

    monkeypatch.setattr(tune, "run_all", fake_run_all)
    monkeypatch.setattr(tune, "ensure_teacher", lambda profile, cache, log: tmp_path / "teacher")
    monkeypatch.setattr(tune, "ensure_classifier", lambda cache: None)
    common = ["hardware=cpu", "method=sid", "key=method.optimizer.lr", "values=1e-4,1e-3,1e-2"]
    common += [f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}", "method.grad_clip=1.0"]
    tune.main(common)
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert result["chosen"] == "1e-3" and result["fd_fmnist"]["1e-2"] == {}
    text = (tmp_path / "out" / "tune.md").read_text()
    assert "| 1e-3 (chosen) | 70.00 | 60.00 |" in text and "| 1e-2 | failed | failed |" in text
    assert all("method.grad_clip=1.0" in cmd for cmd in seen)

    seen.clear()
    tune.main([*common, "nfe=2"])
    assert json.loads((tmp_path / "out" / "tune.json").read_text())["chosen"] == "1e-4"


def test_bad_arguments_say_what_is_missing_or_unknown() -> None:
    tune = load_script()
    with pytest.raises(SystemExit, match="key, values missing"):
        tune.main(["hardware=cpu", "method=sid"])
    with pytest.raises(SystemExit, match="method=nope unknown"):
        tune.main(["method=nope", "key=a", "values=1"])
    with pytest.raises(SystemExit, match="arguments are key=value"):
        tune.main(["--method", "sid"])
