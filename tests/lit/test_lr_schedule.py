"""What each optimizer step applies: ``train.lr_*`` (linear warm-up and decay as the officials schedule
them) and ``method.grad_clip`` (0: no clipping)."""

from __future__ import annotations

import csv
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from distill.config_schema import validate_train_config
from distill.core.gmm import ring_mixture
from distill.core.lr_schedule import lr_factor
from distill.errors import ConfigError
from distill.lit.distill import DistillModule
from distill.methods.base import Method
from distill.methods.progressive import ProgressiveDistillation
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher
from tests.conftest import compose_config


def edm2_learning_rate(cur_nimg: int, batch_size: int, ref_lr: float, ref_batches: float, rampup_Mimg: float) -> float:
    # NVlabs/edm2 training/training_loop.py:47-53 (commit 4bf8162), restated
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr


def fastgen_inverse_sqrt(n: int, warm_up_steps: int, decay_steps: int) -> float:
    # NVlabs/FastGen fastgen/utils/lr_scheduler.py:140-153 (LambdaInverseSquareRootScheduler, commit 34f30e8), restated
    f = 1.0
    if n > decay_steps and decay_steps > 0:
        f /= np.sqrt(n / decay_steps)
    if n < warm_up_steps:
        f *= n / warm_up_steps
    return f


def fastgen_linear(n: int, warm_up: int, cycle_length: int, f_start: float, f_max: float, f_min: float) -> float:
    # NVlabs/FastGen fastgen/utils/lr_scheduler.py:105-125 (LambdaLinearScheduler, one cycle), restated
    if n < warm_up:
        return (f_max - f_start) / warm_up * n + f_start
    t = min(max((n - warm_up) / (cycle_length - warm_up), 0.0), 1.0)
    return f_max - (f_max - f_min) * t


@pytest.mark.parametrize("warmup", [0, 7])
def test_inverse_sqrt_matches_fastgen_and_edm2(warmup):
    for n in range(0, 120):
        ours = lr_factor(n, "inverse_sqrt", warmup_steps=warmup, decay_steps=20)
        assert ours == pytest.approx(fastgen_inverse_sqrt(n, warmup, 20), rel=1e-12, abs=1e-15)
        # EDM2 in images: batch 4, ref_batches 20, rampup = warmup batches of 4 images
        edm2 = edm2_learning_rate(4 * n, 4, 1.0, 20, warmup * 4 / 1e6)
        assert ours == pytest.approx(edm2, rel=1e-12, abs=1e-15)
    assert lr_factor(80, "inverse_sqrt", decay_steps=20) == pytest.approx(0.5)  # sqrt(80 / 20) = 2


def test_linear_decay_matches_fastgen_linear_scheduler_to_zero():
    for n in range(0, 60):
        expected = fastgen_linear(n, warm_up=10, cycle_length=50, f_start=0.0, f_max=1.0, f_min=0.0)
        assert lr_factor(n, "linear_decay", warmup_steps=10, decay_steps=50) == pytest.approx(expected, abs=1e-12)
    assert lr_factor(50, "linear_decay", decay_steps=50) == 0.0


def test_constant_with_warmup_ramps_linearly_from_zero():
    values = [lr_factor(n, warmup_steps=4) for n in range(7)]
    assert values == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(10**9) == 1.0  # no warm-up, no decay


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(schedule="cosine"), "constant, inverse_sqrt, linear_decay"),
        (dict(schedule="inverse_sqrt"), "decay_steps"),
        (dict(schedule="linear_decay", warmup_steps=10, decay_steps=10), "must exceed"),
        (dict(warmup_steps=-1), ">= 0"),
    ],
)
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_factor(0, **kwargs)


def test_logged_lr_follows_the_schedule_times_the_methods_scale(tmp_path):
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    method = ProgressiveDistillation(start_steps=2, final_steps=1, steps_per_round=100)  # scale 1 - step / 100
    module = DistillModule(
        teacher,
        student_from_teacher(teacher.model),
        method,
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lr_schedule="inverse_sqrt",
        lr_warmup_steps=4,
        lr_decay_steps=6,
    )
    data = ring_mixture().sample(256, torch.Generator().manual_seed(0)).float()
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=12,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=16))
    with open(tmp_path / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["student/lr"]) for r in csv.DictReader(f) if r.get("student/lr")}
    assert sorted(logged) == list(range(12))
    for step, lr in logged.items():
        expected = 1e-2 * (1 - step / 100) * min(step / 4, 1) / math.sqrt(max(step / 6, 1))
        assert lr == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert logged[0] == 0.0 and logged[11] < logged[5]  # warm-up from 0, then decay


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.lr_schedule=cosine"], "train.lr_schedule='cosine' is not a valid choice"),
        (["train.lr_schedule=inverse_sqrt"], "train.lr_schedule=inverse_sqrt needs train.lr_decay_steps"),
        (
            ["train.lr_schedule=linear_decay", "train.lr_warmup_steps=10", "train.lr_decay_steps=5"],
            "train.lr_decay_steps",
        ),
        (["train.lr_warmup_steps=-1"], "train.lr_warmup_steps=-1 must be >= 0"),
    ],
)
def test_bad_schedule_keys_fail_validation_naming_the_key(overrides, match, tmp_path):
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)


def test_a_valid_schedule_passes_validation(tmp_path):
    cfg = compose_config(
        "train",
        ["train.lr_schedule=linear_decay", "train.lr_warmup_steps=10", "train.lr_decay_steps=${train.max_steps}"],
        tmp_path,
    )
    validate_train_config(cfg)


def test_build_module_passes_the_train_schedule_to_the_module(tmp_path):
    from distill.build import build_module

    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    cfg = compose_config(
        "train", ["train.lr_schedule=inverse_sqrt", "train.lr_warmup_steps=5", "train.lr_decay_steps=9"], tmp_path
    )
    module = build_module(cfg, teacher)
    assert module.lr_schedule == dict(schedule="inverse_sqrt", warmup_steps=5, decay_steps=9)


def test_build_module_gives_the_module_its_length_guard_and_accumulation(tmp_path):
    """Every training setting reaches the module through its constructor: nothing is set after it."""
    from distill.build import build_module

    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    cfg = compose_config("train", ["method=consistency", "train.max_steps=17", "train.max_bad_steps=3"], tmp_path)
    module = build_module(cfg, teacher, micro_batches=2)
    assert (module.max_batches, module.bad_steps.limit, module.micro_batches) == (17, 3, 2)
    # a method that sets its own length (PD's rounds) wins over train.max_steps
    cfg = compose_config("train", ["method=progressive", "train.max_steps=40"], tmp_path)
    module = build_module(cfg, teacher)
    assert module.max_batches == module.method.num_steps is not None


class ConstantGradient(Method):
    """Every student parameter gets gradient 100 (a global norm far above 1)."""

    def loss(self, phase, x0, teacher, student, step):
        return {"loss": 100 * sum(p.sum() for p in student.parameters())}


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_grad_clip_zero_leaves_the_gradient_unclipped(grad_clip, tmp_path):
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=8, depth=1)), (2,))
    student = student_from_teacher(teacher.model)
    before = [p.detach().clone() for p in student.parameters()]
    module = DistillModule(
        teacher, student, ConstantGradient(), lambda p: torch.optim.SGD(p, lr=0.01), grad_clip=grad_clip
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4))
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, module.student.parameters(), strict=True)])
    if grad_clip == 0:
        torch.testing.assert_close(moved, torch.ones_like(moved))  # lr 0.01 x gradient 100, as given
    else:
        assert moved.norm() == pytest.approx(0.01, rel=1e-4)  # lr x the clipped norm 1
