"""DistillModule: the teacher stays frozen and out of checkpoints; students train."""

import csv

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from distill.core.gmm import ring_mixture
from tests.helpers.modules import fit, make_module


def test_teacher_absent_from_checkpoint_and_unchanged_after_loading(tmp_path):
    module = make_module()
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = fit(module, 6, tmp_path)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False, map_location="cpu")
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert any(k.startswith("student.") for k in ckpt["state_dict"])
    assert any(k.startswith("method.snapshots.") for k in ckpt["state_dict"])  # PD rounds are method state
    for k, v in module.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k], rtol=0, atol=0)

    fresh = make_module()
    teacher_fresh = {k: v.clone() for k, v in fresh.teacher.state_dict().items()}
    fresh.load_state_dict(ckpt["state_dict"])
    for k, v in fresh.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_fresh[k], rtol=0, atol=0)
    for a, b in zip(fresh.student.parameters(), module.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(fresh.method.snapshots) == ["1", "2"] and int(fresh.method.round) == 2


def test_student_and_ema_move_teacher_does_not(tmp_path):
    module = make_module(steps_per_round=100)
    before = [p.clone() for p in module.student.parameters()]
    fit(module, 5, tmp_path)
    assert int(module.step_count) == 5
    assert any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters(), strict=True))
    ema = module.sampling_student()
    assert ema is not module.student
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), module.student.parameters(), strict=True))
    assert all(not p.requires_grad for p in module.teacher.parameters())


def test_checkpoint_from_another_method_is_refused(tmp_path):
    import pytest

    module = make_module()
    state = module.state_dict()
    state["method.unknown_buffer"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="does not match this method"):
        make_module().load_state_dict(state)


def test_metrics_reach_the_logger_every_log_every_n_steps_batches_and_on_the_last(tmp_path):
    module = make_module()
    module.max_batches = 8
    data = ring_mixture().sample(512, torch.Generator().manual_seed(0)).float()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=64))
    with open(tmp_path / "metrics.csv") as f:
        logged = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("loss")})
    assert logged == [2, 5, 7]  # batches 3 and 6 complete a multiple of 3; batch 8 is the run's last
