"""The digits teacher committed under experiments/weights/digits is the one `distill-pretrain
dataset=digits` makes, and `make teacher` puts it in the cache instead of training."""

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.teachers.checkpoint import load_teacher
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "experiments" / "weights" / "digits"


def recorded_sha256() -> str:
    record = (REPO / "experiments" / "weights" / "RECORD.md").read_text()
    section = record.split("## digits/", 1)[1]
    return re.search(r"SHA-256 of `model.safetensors`: `([0-9a-f]{64})`", section).group(1)


def test_committed_digits_teacher_is_the_pretrain_recipe_and_its_recorded_hash(tmp_path: Path) -> None:
    cfg = compose_config("pretrain", ["dataset=digits"], tmp_path)
    teacher = load_teacher(COMMITTED)
    meta = teacher.meta
    assert meta["net"] == {k: v for k, v in cfg.net.items()}
    assert (meta["train_steps"], meta["batch_size"], meta["seed"]) == (
        cfg.train.max_steps,
        cfg.train.batch_size,
        cfg.seed,
    )
    assert meta["dataset"] == "digits" and tuple(teacher.data_shape) == (1, 8, 8)
    assert hashlib.sha256((COMMITTED / "model.safetensors").read_bytes()).hexdigest() == recorded_sha256()


@pytest.mark.skipif(not (REPO / ".venv" / ".installed").is_file(), reason="needs `make setup`'s .venv")
def test_make_teacher_copies_the_committed_teacher_into_an_empty_cache_and_keeps_a_cached_one(tmp_path: Path) -> None:
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path)}
    make = ["make", "-s", "-C", str(REPO), "teacher"]
    first = subprocess.run(make, env=env, capture_output=True, text=True, check=True)
    cached = tmp_path / "teachers" / "digits" / "model.safetensors"
    assert "the committed one" in first.stdout
    assert cached.read_bytes() == (COMMITTED / "model.safetensors").read_bytes()
    cached.write_bytes(b"a teacher trained here")  # a cache that holds a teacher keeps it
    second = subprocess.run(make, env=env, capture_output=True, text=True, check=True)
    assert "the committed one" not in second.stdout and cached.read_bytes() == b"a teacher trained here"


@pytest.mark.slow
def test_pretraining_digits_again_reproduces_the_committed_teacher(tmp_path: Path) -> None:
    """Bit-identical on the machine that made it (2 CPU cores, torch 2.14.1); 2.7 minutes."""
    from distill.pretrain import pretrain

    cfg = compose_config("pretrain", ["dataset=digits", "progress=false", f"out={tmp_path / 'digits'}"], tmp_path)
    out = pretrain(cfg)
    fresh, committed = load_file(out / "model.safetensors"), load_file(COMMITTED / "model.safetensors")
    assert fresh.keys() == committed.keys()
    assert all(torch.equal(fresh[k], committed[k]) for k in committed)
