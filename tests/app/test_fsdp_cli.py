"""``distill-train hardware=fsdp_sim`` from the command line: two CPU ranks, FSDP2, sharded checkpoints.

The same DMD2 run under ``hardware=ddp_sim`` and ``hardware=fsdp_sim`` ends with the same weights,
evaluation rows and exported model; the FSDP run's ``last.ckpt`` is a folder of shards that
``distill-export`` reads as it is and ``distill-consolidate`` turns into one file; and an FSDP run
killed with SIGKILL (both ranks) resumes from its sharded checkpoint to the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.lit.checkpoint_io import is_sharded_checkpoint, read_checkpoint
from tests.app.test_resume import wait_for_step

REPO = Path(__file__).resolve().parents[2]
RUN = [
    "method=dmd2",
    "dataset=digits",
    "eval=fast",
    "eval.teacher=false",
    "logger=csv",
    "progress=false",
    "train.global_batch_size=16",
    "train.max_steps=12",
    "train.checkpoint_every=4",
]


def env(cache: Path) -> dict[str, str]:
    return dict(os.environ, DISTILL_CACHE=str(cache), WANDB_MODE="offline", OMP_NUM_THREADS="1")


def train_command(hardware: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "distill.train", f"hardware={hardware}", *RUN, f"hydra.run.dir={run_dir}"]


def run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=REPO, env=env(cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=atol, msg=key)


def result_rows(run_dir: Path) -> dict[tuple, float]:
    rows = json.loads((run_dir / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return {
        (r["model"], r["sampler"], r["nfe"], r["metric"]): r["value"] for r in rows if not r["metric"].endswith("_mb")
    }


@pytest.mark.slow
def test_the_fsdp_debug_run_from_the_command_line(cache_dir, tmp_path):
    cmd = [sys.executable, "-m", "distill.train", "hardware=fsdp_sim", "method=dmd2", "debug=fast"]
    done = run([*cmd, f"hydra.run.dir={tmp_path / 'run'}"], cache_dir)
    assert "MEMBER: 2/2" in done.stderr and "| student | dmd2 |" in done.stdout


@pytest.mark.slow
def test_an_fsdp_run_trains_evaluates_exports_and_resumes_as_the_ddp_run(cache_dir, tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run(train_command("ddp_sim", ddp), cache_dir)
    out = run(train_command("fsdp_sim", fsdp), cache_dir)
    assert "MEMBER: 2/2" in out.stderr and "optimizer state" in out.stdout
    assert is_sharded_checkpoint(fsdp / "checkpoints" / "last.ckpt")
    assert_same_weights(weights(ddp), weights(fsdp))

    ddp_rows, fsdp_rows = result_rows(ddp), result_rows(fsdp)
    assert ddp_rows.keys() == fsdp_rows.keys() and any(k[0] == "student" for k in ddp_rows)
    for key, value in ddp_rows.items():
        assert fsdp_rows[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key

    for name in (ddp, fsdp):
        run([sys.executable, "-m", "distill.export", f"run_dir={name}", f"out={name / 'export'}"], cache_dir)
    exported = [
        sorted((p.relative_to(d / "export"), p) for p in (d / "export").rglob("*.safetensors")) for d in (ddp, fsdp)
    ]
    assert exported[0] and [rel for rel, _ in exported[0]] == [rel for rel, _ in exported[1]]
    for (_, a), (_, b) in zip(*exported, strict=True):
        assert_same_weights(load_file(a), load_file(b))

    consolidated = tmp_path / "fsdp.ckpt"
    run(
        [sys.executable, "-m", "distill.consolidate", str(fsdp / "checkpoints" / "last.ckpt"), str(consolidated)],
        cache_dir,
    )
    whole = torch.load(consolidated, map_location="cpu", weights_only=True)
    assert_same_weights(whole["state_dict"], weights(fsdp), atol=0)
    assert not any(key.startswith("optimizer") for key in whole)

    # SIGKILL both ranks (Lightning started rank 1 as rank 0's child) after the checkpoint of step 4 or later.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_command("fsdp_sim", killed),
        cwd=REPO,
        env=env(cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_step(proc, killed / "checkpoints", 4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run(train_command("fsdp_sim", killed), cache_dir)
    assert "resuming from" in resumed.stdout
    assert_same_weights(weights(fsdp), weights(killed), atol=0)
