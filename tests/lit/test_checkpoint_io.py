"""Checkpoints: a crash mid-save keeps the last one whole; a corrupt one is named and skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from distill.callbacks.resume import RUN_KEY, find_resume_point
from distill.errors import CheckpointError, ConfigError
from distill.lit import checkpoint_io
from distill.lit.checkpoint_io import AtomicCheckpointIO, read_checkpoint


def checkpoint(step: int, method: str = "pcm") -> dict:
    return {
        "state_dict": {"w": torch.full((3,), float(step))},
        "global_step": step,
        RUN_KEY: {"method": method, "wandb_run_id": "abc123", "rng": []},
    }


def test_a_crash_mid_save_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(4), last)

    def crash_halfway(obj, f):  # a full disk or a kill, after part of the file is out
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", crash_halfway)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint(checkpoint(8), last)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(last)["state_dict"]["w"], torch.full((3,), 4.0))
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a crash without atomicity


def test_a_corrupt_checkpoint_is_named_and_resume_falls_back_to_the_one_before(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(4), tmp_path / "epoch=0-step=4.ckpt")
    io.save_checkpoint(checkpoint(8), tmp_path / "last.ckpt")
    corrupt(tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"last.ckpt is not a readable checkpoint \(.*truncated, corrupt"):
        read_checkpoint(tmp_path / "last.ckpt")
    with pytest.warns(UserWarning, match="resume: skipping .*last.ckpt is not a readable checkpoint"):
        point = find_resume_point("auto", tmp_path, "pcm")
    assert point.path.name == "epoch=0-step=4.ckpt" and point.step == 4 and point.wandb_run_id == "abc123"
    corrupt(tmp_path / "epoch=0-step=4.ckpt")
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="ckpt_path=last, but .* no good checkpoint"):
        find_resume_point("last", tmp_path, "pcm")
    with pytest.warns(UserWarning):
        assert find_resume_point("auto", tmp_path, "pcm") is None  # nothing usable: start afresh
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):  # named explicitly: no fallback
        find_resume_point(str(tmp_path / "last.ckpt"), tmp_path, "pcm")


def test_a_checkpoint_from_another_method_is_refused(tmp_path):
    AtomicCheckpointIO().save_checkpoint(checkpoint(4, method="dmd2"), tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="written by method=dmd2, but this run is method=pcm"):
        find_resume_point("auto", tmp_path, "pcm")
    assert find_resume_point(None, tmp_path, "pcm") is None  # ckpt_path=null: a fresh start is still possible


def test_loading_never_unpickles_objects(tmp_path):
    torch.save({"state_dict": {}, "payload": Path("/etc")}, tmp_path / "pickled.ckpt")  # not a tensor or plain type
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "pickled.ckpt")
