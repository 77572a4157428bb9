"""experiments/table_fmnist.py: the Fashion-MNIST table's runner, its targets and one end-to-end run."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_UNET, train_tiny_teacher
from tests.helpers.experiments import EXPERIMENTS, load_experiment
from tests.helpers.fashion_mnist import write_fashion_mnist


def load_script():
    return load_experiment("table_fmnist")


def agg_row(method: str, sampler: str, nfe: int, mean: float) -> dict:
    return {
        "dataset": "fashion_mnist",
        "method": method,
        "sampler": sampler,
        "nfe": nfe,
        "metric": "fd_fmnist",
        "mean": mean,
        "std": 0.0,
        "seeds": 1,
        "train_steps": 10,
    }


def test_targets_say_which_hold_and_who_misses() -> None:
    table = load_script()
    teacher = [
        agg_row("teacher", "euler", 2, 100.0),
        agg_row("teacher", "dpmpp_2m", 4, 30.0),
        agg_row("teacher", "heun", 63, 10.0),
    ]
    students = [
        agg_row("dmd2", "dmd2", 1, 11.0),
        agg_row("dmd2", "dmd2", 2, 9.0),
        agg_row("progressive", "progressive", 2, 25.0),
        agg_row("noise floor", "train split", 0, 1.0),
    ]
    lines = "\n".join(table.targets(teacher + students))
    assert "Best method at 2 NFE (dmd2, 9.000) is 0.90x the teacher's best (target <= 1.0x): holds" in lines
    assert "Best method at 1 NFE (dmd2, 11.000) is 1.10x the teacher's best (target <= 1.2x): holds" in lines
    assert "missed by progressive." in lines  # 25 * 5 > 100: not 5x below Euler at 2 NFE
    assert table.best_rows(teacher + students)["teacher"]["nfe"] == 63  # the noise floor is no model's best


def test_arguments_split_into_the_runners_keys_and_run_overrides() -> None:
    table = load_script()
    own, overrides = table.parse(["hardware=cpu", "seeds=0,1", "method.optimizer.lr=1e-4"])
    assert own == {"hardware": "cpu", "seeds": "0,1"} and overrides == ["method.optimizer.lr=1e-4"]
    with pytest.raises(SystemExit, match="arguments are key=value"):
        table.parse(["--hardware", "cpu"])
    with pytest.raises(SystemExit, match="methods=nope unknown"):
        table.main(["hardware=cpu", "methods=nope"])


def test_fast_dev_run_writes_the_table_grids_and_best_row_arrays_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 steps on a 256-image subset of fake Fashion-MNIST files, one method, 64 samples per row."""
    table = load_script()
    write_fashion_mnist(tmp_path / "data" / "fashion-mnist", n_train=300, n_test=64)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    cache = tmp_path / "cache"
    images = table_images(tmp_path / "data" / "fashion-mnist")
    train_tiny_teacher(cache / "teachers" / "fashion_mnist_cpu", images, TINY_UNET, steps=3)
    out = tmp_path / "out"
    arguments = [
        "hardware=cpu",
        "fast_dev_run=true",
        "methods=dmd2",
        f"cache={cache}",
        f"runs={tmp_path / 'runs'}",
        f"out={out}",
        "method.ema_decays=[0.9]",
    ]
    table.main(arguments)
    rows = json.loads((out / "benchmark.json").read_text())
    scored = {(r["method"], r["sampler"], r["nfe"]) for r in rows if r["metric"] == "fd_fmnist"}
    # Heun's one step is Euler's (no row of its own), so at NFE <= 2 only Euler and DPM-Solver++(2M) have rows.
    assert {
        ("teacher", "euler", 1),
        ("teacher", "euler", 2),
        ("teacher", "dpmpp_2m", 2),
        ("noise floor", "train split", 0),
        ("dmd2", "dmd2", 1),
        ("dmd2", "dmd2", 4),
    } <= scored
    assert all(np.isfinite(r["value"]) for r in rows)
    markdown = (out / "benchmark.md").read_text()
    assert "hardware=cpu fast_dev_run=true" not in markdown  # the runner's own keys are not run overrides
    assert "## Targets" in markdown and "| dmd2 | dmd2 | 1 |" in markdown
    assert (out / "benchmark.png").stat().st_size > 1000
    assert (out / "grids" / "teacher_dpmpp_2m_nfe2.png").is_file() and (out / "grids" / "dmd2_nfe1.png").is_file()
    best = {p.name.split("_")[0] for p in out.glob("*.npy")}
    assert best == {"teacher", "dmd2"}
    samples = np.load(next(out.glob("dmd2_*.npy")))
    assert samples.shape == (64, 28, 28) and samples.dtype == np.uint8
    committed = (EXPERIMENTS / "weights" / "fmnist_classifier.safetensors").read_bytes()
    assert (cache / "fmnist_classifier.safetensors").read_bytes() == committed  # scored with the committed classifier

    # resume=true keeps every finished row, retrains nothing, and the table names each row's invocation
    (tmp_path / "runs" / "teacher" / "invocation").write_text("2026-01-01T00:00:00Z\n")
    trained = (tmp_path / "runs" / "dmd2" / "s0" / "results.json").stat().st_mtime_ns
    table.main([*arguments, "resume=true"])
    assert (tmp_path / "runs" / "dmd2" / "s0" / "results.json").stat().st_mtime_ns == trained
    markdown = (out / "benchmark.md").read_text()
    assert "Rows from 2 invocations (resume=true)" in markdown and "- `teacher`: 2026-01-01T00:00:00Z" in markdown
    assert "| dmd2 | dmd2 | 1 |" in markdown


def table_images(folder: Path):
    from distill.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(folder, "train")[0]


def test_every_method_config_says_what_was_tuned_on_which_split() -> None:
    configs = sorted((EXPERIMENTS.parent / "conf" / "method").glob("*.yaml"))
    assert [p.stem for p in configs] == load_script().METHODS  # the table runs every method config
    for path in configs:
        text = " ".join(line.removeprefix("# ") for line in path.read_text().splitlines())
        assert "Tuned on data: " in text, path.name
        assert "held-out split" in text or "Tuned on data: nothing" in text, path.name


def test_committed_cpu_teacher_is_the_cpu_profiles_recipe_and_loads() -> None:
    from distill.teachers.checkpoint import load_teacher

    table = load_script()
    profile = table.PROFILES["cpu"]
    folder = table.COMMITTED / profile.teacher
    teacher = load_teacher(folder)
    recipe = dict(arg.split("=", 1) for arg in profile.teacher_recipe)
    record = json.loads((folder / "teacher.json").read_text())
    assert record["net"]["block_out_channels"] == json.loads(recipe["net.block_out_channels"])
    assert record["net"]["attention"] is (recipe["net.attention"] == "true")
    assert record["train_steps"] == int(recipe["train.max_steps"]) and record["dataset"] == "fashion_mnist"
    assert tuple(teacher.data_shape) == (1, 28, 28)


def test_profile_method_overrides_reach_their_method_only_and_name_real_keys(tmp_path: Path) -> None:
    from tests.conftest import compose_config

    table = load_script()
    profile = table.PROFILES["cpu"]
    assert profile.method_overrides, "the CPU profile bounds the ODE-pair methods' solves"
    for method, overrides in profile.method_overrides.items():
        job = table.training_job(profile, method, 0, tmp_path, tmp_path, tmp_path, ["method.grad_clip=2.0"])
        assert set(overrides) <= set(job.cmd) and job.cmd[-1] == "method.grad_clip=2.0"  # the user's word last
        compose_config("train", [f"method={method}", *overrides], tmp_path)  # an unknown key fails to compose
    plain = table.training_job(profile, "dmd2", 0, tmp_path, tmp_path, tmp_path, [])
    assert not [arg for overrides in profile.method_overrides.values() for arg in overrides if arg in plain.cmd]


def test_a_continuing_method_starts_from_the_same_seeds_run_of_the_method_it_continues(tmp_path: Path) -> None:
    table = load_script()
    assert table.with_first_methods(["tcm", "dmd2"]) == ["ect", "tcm", "dmd2"]  # added, and first
    assert table.with_first_methods(["ect", "tcm"]) == ["ect", "tcm"]
    job = table.training_job(table.PROFILES["cpu"], "tcm", 1, tmp_path, tmp_path / "t", tmp_path / "runs", [])
    assert job.after == tmp_path / "runs" / "ect" / "s1" and f"init_from={job.after}" in job.cmd
    assert table.training_job(table.PROFILES["cpu"], "ect", 1, tmp_path, tmp_path / "t", tmp_path, []).after is None


def test_a_continuation_waits_for_its_first_run_and_is_skipped_when_that_fails(tmp_path: Path) -> None:
    table = load_script()
    profile = replace(table.PROFILES["cpu"], parallel=2)
    log = tmp_path / "order"

    def job(name: str, code: int, after: str | None = None):
        script = (
            f"import time; time.sleep(0.3); open({str(log)!r}, 'a').write({name!r} + ' '); raise SystemExit({code})"
        )
        return table.Job(name, tmp_path / name, [sys.executable, "-c", script], after=after and tmp_path / after)

    finished = table.run_all(profile, [job("second", 0, after="first"), job("first", 0)], "now")
    assert log.read_text() == "first second " and len(finished) == 2  # listed first, it still waited
    finished = table.run_all(profile, [job("bad", 1), job("dependent", 0, after="bad")], "now")
    assert finished == [] and not (tmp_path / "dependent").exists()
