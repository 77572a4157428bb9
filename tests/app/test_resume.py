"""Runs that survive: a crashed, killed or preempted run resumes to the weights and metrics of a run
that never stopped (bit-identical on CPU)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from distill.callbacks.preemption import Preempted
from distill.callbacks.resume import RUN_KEY, find_resume_point
from distill.evaluation.results import RESULTS_NAME
from distill.lit.checkpoint_io import read_checkpoint
from distill.lit.distill import DistillModule
from distill.train import train
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[2]
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
# 5 batches an epoch: 12 steps cross two epoch ends; a checkpoint every 2 optimizer steps.
RUN = [
    "logger=csv",
    "progress=false",
    "dataset=gmm",
    "teacher=gmm_exact",
    "student=mlp",
    "dataset.num_train=640",
    "train.max_steps=12",
    "train.checkpoint_every=2",
    "eval=fast",
    "eval.teacher=false",
    "eval.every_n_steps=4",
    "eval.student_nfes=[1]",
]


def run(run_dir: Path, *overrides: str) -> None:
    train(compose_config("train", [*RUN, *overrides], run_dir))


@contextmanager
def at_step(step: int, action):
    """Call ``action(module)`` when training reaches ``step``, before that step runs."""
    original = DistillModule.training_step

    def training_step(self, batch, batch_idx):
        if int(self.step_count) == step:
            action(self)
        return original(self, batch, batch_idx)

    DistillModule.training_step = training_step
    try:
        yield
    finally:
        DistillModule.training_step = original


def crash(module: DistillModule) -> None:
    raise RuntimeError("simulated crash")


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Equal weights, buffers, optimizer moments and result rows (peak RSS aside: a fact of the process)."""
    a, b = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (reference, resumed))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
        assert all(
            torch.equal(torch.as_tensor(x), torch.as_tensor(sb["state"][k][name]))
            for k, moments in sa["state"].items()
            for name, x in moments.items()
        )

    def rows(d: Path) -> list[dict]:
        return [r for r in json.loads((d / RESULTS_NAME).read_text()) if r["metric"] != "peak_memory_mb"]

    assert rows(reference) == rows(resumed) and any(r["model"] == "student" for r in rows(reference))


def first_run(tmp_path: Path, method: str) -> list[str]:
    """``init_from`` of a finished run of the method ``method`` continues (``method.continues``: TCM), if any."""
    first = yaml.safe_load((REPO / "conf" / "method" / f"{method}.yaml").read_text()).get("continues")
    if not first:
        return []
    run(tmp_path / "first", f"method={first}")
    return [f"init_from={tmp_path / 'first'}"]


def crash_and_resume(tmp_path: Path, method: str, step: int, capsys) -> None:
    init = first_run(tmp_path, method)
    run(tmp_path / "reference", f"method={method}", *init)
    with at_step(step, crash), pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", f"method={method}", *init)
    torch.manual_seed(1234)  # whatever the crash left in the RNG is not what the resumed run draws
    run(tmp_path / "crashed", f"method={method}", *init)
    assert "resuming from" in capsys.readouterr().out
    assert_same_run(tmp_path / "reference", tmp_path / "crashed")


def test_a_crashed_run_resumes_bit_identical(cache_dir, tmp_path, capsys):
    # DMD2: two optimizers at a 2:1 ratio, a fake-score net, GAN heads and an EMA copy, mid-epoch.
    crash_and_resume(tmp_path, "dmd2", 7, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_resumes_bit_identical(cache_dir, tmp_path, capsys, method):
    crash_and_resume(tmp_path, method, 7, capsys)


SECRET = "wandb-api-key-0123456789abcdef"


def test_a_preempted_run_saves_resumes_into_its_wandb_run_and_never_logs_the_key(
    cache_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run_dir = tmp_path / "run"

    def preempt(module: DistillModule) -> None:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else the signal would end pytest
        signal.raise_signal(signal.SIGTERM)

    with at_step(5, preempt), pytest.raises(Preempted) as stopped:
        run(run_dir, "logger=wandb")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert f"preempted by SIGTERM at step 6: saved {run_dir / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["step_count"]) == 6  # the step the signal came in finished first
    run_id = ckpt[RUN_KEY]["wandb_run_id"]

    run(run_dir, "logger=wandb")
    assert (
        int(read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]["step_count"]) == 10
    )  # PD: 5 rounds of 2
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    # one W&B run, resumed; W&B names a folder by the second and adds "-1" when both runs start in one
    same_run = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?")
    assert len(runs) == 2 and all(same_run.fullmatch(name) for name in runs), runs
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)


def cli_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, DISTILL_CACHE=str(cache), WANDB_MODE="offline", OMP_NUM_THREADS="1")


def newest_step(checkpoints: Path) -> int:
    steps = [int(m.group(1)) for p in checkpoints.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


def wait_for_step(proc: subprocess.Popen, checkpoints: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while newest_step(checkpoints) < step:
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within {timeout} s"
        time.sleep(0.02)


def test_sigterm_saves_and_exits_cleanly(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "distill.train", *RUN, "train.max_steps=100000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        args, cwd=REPO, env=cli_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_step(proc, run_dir / "checkpoints", 2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert re.search(r"preempted by SIGTERM at step \d+: saved .*last.ckpt; run the same command again", err)
    assert "Traceback" not in err
    point = find_resume_point("auto", run_dir / "checkpoints", "progressive")
    assert point is not None and point.path.name == "last.ckpt"
    assert int(read_checkpoint(point.path)["state_dict"]["step_count"]) >= 2


@pytest.mark.slow
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights_and_metrics(cache_dir, tmp_path):
    overrides = [
        *RUN,
        "method=dmd2",
        "dataset.num_train=20000",
        "train.max_steps=400",
        "train.checkpoint_every=10",
        "eval.every_n_steps=100",
    ]

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "distill.train", *overrides, f"hydra.run.dir={run_dir}"]

    env = cli_env(cache_dir)
    reference = subprocess.run(command(tmp_path / "reference"), cwd=REPO, env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]
    kill_after = random.SystemRandom().randrange(10, 450)  # optimizer steps (DMD2 takes 1 or 2 a batch)
    print(f"SIGKILL after the checkpoint of step {kill_after}")
    proc = subprocess.Popen(
        command(tmp_path / "killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_step(proc, tmp_path / "killed" / "checkpoints", kill_after)
        time.sleep(random.SystemRandom().uniform(0, 0.2))  # anywhere between two checkpoints
    finally:
        proc.kill()
        proc.wait()
    resumed = subprocess.run(command(tmp_path / "killed"), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


@pytest.mark.parametrize("method", ["consistency", "dmd2"])
def test_last_checkpoint_holds_the_final_weights_when_the_interval_does_not_fall_on_the_last_step(
    cache_dir, tmp_path, method
):
    # 7 batches, a checkpoint every 5 optimizer steps: before the fix last.ckpt stayed at step 5
    # (DMD2's two optimizers end at an odd optimizer step too), and distill-eval read stale weights.
    run(tmp_path, f"method={method}", "train.max_steps=7", "train.checkpoint_every=5", "eval.every_n_steps=0")
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["step_count"]) == 7
    assert ckpt["global_step"] % 5 != 0
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert {r["step"] for r in results if r["model"] == "student" and r["nfe"] == 1} == {7}


def test_a_run_preempted_before_its_first_periodic_checkpoint_ends_with_its_final_weights_in_last_ckpt(
    cache_dir, tmp_path
):
    # The preemption wrote last.ckpt before Lightning's ModelCheckpoint ever had, so at the final
    # (periodic) step it saved last-v1.ckpt beside it and last.ckpt kept step 4's weights for
    # distill-eval and distill-export to read (seen on the reflow_distill_digits seed-2 run).
    run_dir = tmp_path / "run"
    overrides = ["method=consistency", "train.max_steps=8", "train.checkpoint_every=8", "eval.every_n_steps=0"]
    with at_step(3, lambda module: signal.raise_signal(signal.SIGTERM)), pytest.raises(Preempted):
        run(run_dir, *overrides)
    run(run_dir, *overrides)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert int(read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]["step_count"]) == 8
