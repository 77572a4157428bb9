"""Gradient accumulation: a batch run in micro-batches makes the update the whole batch makes."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.build import apply_batch_plan, world_size
from distill.lit.distill import DistillModule
from distill.methods.base import Method
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher


class TeacherRegression(Method):
    """Deterministic (no noise): each sample's time is a function of the sample, not of its batch."""

    def loss(self, phase, x0, teacher, student, step):
        s = torch.sigmoid(x0.sum(dim=1))
        per_sample = (student(x0, s) - teacher(x0, s)).pow(2).sum(dim=1)
        return {"loss": per_sample.mean(), "batch": torch.tensor(float(len(x0)))}


def trained_state(micro_batches: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    student = student_from_teacher(teacher.model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    module = DistillModule(
        teacher,
        student,
        TeacherRegression(),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        ema_decays=[0.9],
        grad_clip=0.5,
        max_batches=3,
        micro_batches=micro_batches,
    )
    data = torch.randn(24, 2, generator=torch.Generator().manual_seed(1))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=module.optimizer_steps_bound(3),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=8))
    assert int(module.step_count) == 3
    assert float(trainer.callback_metrics["student/batch"]) == 8 / micro_batches  # each part saw its share
    return module.state_dict()


def test_four_micro_batches_make_the_update_of_the_whole_batch():
    whole, parts = trained_state(1), trained_state(4)
    for key, value in whole.items():
        torch.testing.assert_close(parts[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_the_batch_plan_reaches_the_config(compose_train):
    cfg = compose_train(
        "hardware=ddp_sim", "train.global_batch_size=64", "train.images=640", "train.max_device_batch=16"
    )
    plan = apply_batch_plan(cfg)
    assert (cfg.train.batch_size, cfg.train.max_steps, plan.accumulation) == (32, 10, 2)
    assert world_size(compose_train("hardware=8xa100_ddp").hardware) == 8
    assert world_size(compose_train("hardware=slurm_multinode", "hardware.num_nodes=4").hardware) == 32
    unchanged = compose_train()  # no global batch: train.batch_size per device, train.max_steps
    plan = apply_batch_plan(unchanged)
    assert (unchanged.train.batch_size, unchanged.train.max_steps, plan.accumulation) == (128, 1500, 1)
