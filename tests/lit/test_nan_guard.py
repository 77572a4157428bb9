"""Non-finite steps are skipped (weights, moments and EMA untouched), counted, and stop a diverged run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from distill.errors import CheckpointError, DivergenceError
from distill.lit.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from distill.lit.distill import DistillModule
from distill.methods.base import Method
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher


class NaNOnDemand(Method):
    """Regresses the student's velocity onto zero; the calls in ``bad`` go wrong in ``how``."""

    def __init__(self, bad: set[int], how: str = "loss"):
        super().__init__()
        self.bad, self.how, self.calls = bad, how, 0

    def loss(self, phase, x0, teacher, student, step):
        self.calls += 1
        v = student(x0, torch.full((len(x0),), 0.5))
        if self.calls not in self.bad:
            return {"loss": v.pow(2).mean()}
        if self.how == "loss":
            return {"loss": v.pow(2).mean() * float("nan")}
        return {"loss": (v * 0).abs().sqrt().mean()}  # finite (zero) loss, NaN gradient


class Snapshots(L.Callback):
    """Whether student and EMA moved in each batch."""

    def __init__(self):
        self.moved: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [torch.cat([p.flatten().clone() for p in m.parameters()]) for m in (module.student, module.ema)]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = [torch.cat([p.flatten() for p in m.parameters()]) for m in (module.student, module.ema)]
        self.moved.append(tuple(not torch.equal(a, b) for a, b in zip(self.before, after, strict=True)))


def fit(method: Method, batches: int, tmp_path, max_bad_steps: int = 10, *callbacks: L.Callback):
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    module = DistillModule(
        teacher,
        student_from_teacher(teacher.model),
        method,
        lambda p: torch.optim.Adam(p, lr=1e-2),
        ema_decays=[0.9],
        max_batches=batches,
        max_bad_steps=max_bad_steps,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=100,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        callbacks=list(callbacks),
    )
    data = DataLoader(TensorDataset(torch.randn(256, 2)), batch_size=32)
    return module, trainer, lambda: trainer.fit(module, data)


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_a_bad_step_is_skipped_counted_and_logged(tmp_path, how):
    snapshots = Snapshots()
    module, trainer, run = fit(NaNOnDemand({3, 4}, how), 6, tmp_path, 10, snapshots)
    run()
    assert int(module.step_count) == 6 and len(snapshots.moved) == 8  # two batches more for two skipped steps
    assert snapshots.moved[2:4] == [(False, False)] * 2  # neither student nor EMA took a bad step
    assert all(moved == (True, True) for i, moved in enumerate(snapshots.moved) if i not in (2, 3))
    assert trainer.logged_metrics["train/skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_diverged_run_stops_naming_step_term_and_checkpoint_which_stays_finite(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1)
    module, trainer, run = fit(NaNOnDemand(set(range(3, 100))), 50, tmp_path, 4, saver)
    with pytest.raises(DivergenceError) as err:
        run()
    last = tmp_path / "checkpoints" / "last.ckpt"
    message = str(err.value)
    assert "4 steps in a row had a non-finite student/loss, student/grad_norm (the last at step 2)" in message
    assert f"the last good checkpoint is {last}" in message
    ckpt = read_checkpoint(last)
    assert int(ckpt["state_dict"]["step_count"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())

    before = last.read_bytes()  # weights gone bad some other way are never written either
    with torch.no_grad():
        next(module.student.parameters())[0] = float("inf")
    with pytest.raises(CheckpointError, match=r"refusing to checkpoint non-finite weights \(student\."):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == before
