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


def sharded(path: Path, step: int, method: str = "pcm") -> Path:
    """A sharded checkpoint as an FSDP run writes it: tensors through torch distributed checkpoint
    (here from one process), the rest of Lightning's checkpoint in meta.pt."""
    import torch.distributed.checkpoint as dcp

    whole = checkpoint(step, method)
    state = {"state_dict": whole.pop("state_dict"), "optimizer_0": {"state": {"w": {"exp_avg": torch.ones(3)}}}}
    dcp.save(state, checkpoint_id=str(path))
    torch.save(whole, path / checkpoint_io.SHARDED_META)
    return path


def test_a_sharded_checkpoint_is_read_whole_resumed_from_and_consolidated_without_optimizer_states(tmp_path):
    from distill.consolidate import default_out, main

    folder = sharded(tmp_path / "checkpoints" / "last.ckpt", 6)
    assert checkpoint_io.is_sharded_checkpoint(folder)
    ckpt = read_checkpoint(folder)
    assert torch.equal(ckpt["state_dict"]["w"], torch.full((3,), 6.0)) and ckpt["global_step"] == 6
    meta_only = read_checkpoint(folder, weights=False)
    assert meta_only["state_dict"] == {} and meta_only[RUN_KEY]["method"] == "pcm"
    point = find_resume_point("auto", folder.parent, "pcm")
    assert point is not None and point.path == folder and point.step == 6
    stored = checkpoint_io.stored_tensors(folder)
    assert stored["w"].is_meta and stored["w"].shape == (3,)

    main([str(folder)])
    whole = torch.load(default_out(folder), weights_only=True)
    assert torch.equal(whole["state_dict"]["w"], ckpt["state_dict"]["w"]) and whole["global_step"] == 6
    assert not any(key.startswith("optimizer") for key in whole)
    assert default_out(folder).suffix == ".pt"  # never a *.ckpt a resume would pick


def test_a_folder_that_is_not_a_sharded_checkpoint_is_named(tmp_path, capsys):
    from distill.consolidate import main

    (tmp_path / "empty.ckpt").mkdir()
    with pytest.raises(CheckpointError, match="without meta.pt"):
        read_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty.ckpt")])
    assert exit_info.value.code == 2 and "not a sharded checkpoint" in capsys.readouterr().err


def test_swapping_in_a_checkpoint_folder_keeps_a_whole_one_at_every_moment(tmp_path, monkeypatch):
    from distill.core import io

    last = sharded(tmp_path / "last.ckpt", 4)
    staging = sharded(tmp_path / ".last.ckpt.partial", 8)
    real_replace, calls = os.replace, []

    def crash_between_renames(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the old one moved aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_between_renames)
    with pytest.raises(KeyboardInterrupt):
        io.swap_in_directory(staging, last)
    point = find_resume_point("auto", tmp_path, "pcm")  # last.old.ckpt is still a checkpoint
    assert point is not None and point.path.name == "last.old.ckpt" and point.step == 4
    monkeypatch.setattr(io.os, "replace", real_replace)
    io.swap_in_directory(staging, last)
    assert read_checkpoint(last)["global_step"] == 8 and not (tmp_path / "last.old.ckpt").exists()
