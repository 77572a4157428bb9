"""``distill-train hardware=ddp_sim`` from the command line: Lightning starts the second rank by
re-running the command, the global batch is split over the two, and the same command resumes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(run_dir: Path, steps: int) -> subprocess.CompletedProcess:
    args = [
        "hardware=ddp_sim",
        "dataset=gmm",
        "teacher=gmm_exact",
        "student=mlp",
        "eval=fast",
        "eval.teacher=false",
        "logger=csv",
        "progress=false",
        "train.global_batch_size=64",
        f"train.max_steps={steps}",
        "train.checkpoint_every=2",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "distill.train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_two_cpu_ranks_train_evaluate_and_resume_from_the_command_line(tmp_path):
    first = run(tmp_path / "run", steps=4)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "MEMBER: 2/2" in first.stderr and (tmp_path / "run" / "results.json").exists()
    second = run(tmp_path / "run", steps=6)  # the same command, a longer budget: continues from step 4
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and "(optimizer step 4)" in second.stdout
