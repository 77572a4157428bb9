"""``student=fresh``: the teacher's architecture with new weights, nothing of the teacher's kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.build import build_datamodule, build_student, build_teacher
from distill.errors import ConfigError
from distill.students.flow_map import fresh_student_like
from tests.conftest import compose_config
from tests.helpers.runs import TINY_RUN
from tests.methods.learning import tiny_unet_teacher


def trained_looking(model: nn.Module) -> nn.Module:
    """Shift every parameter off PyTorch's initial values (norm layers start at exactly 1 and 0)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return model


def test_fresh_student_has_the_teachers_shapes_and_none_of_its_values():
    teacher = trained_looking(tiny_unet_teacher().model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = fresh_student_like(teacher)
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert shapes == {k: v.shape for k, v in before.items()}
    params = dict(student.named_parameters())
    assert params and all(not torch.equal(p, before[name]) for name, p in params.items())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert all(p.requires_grad for p in student.parameters()) and student.training


def test_fresh_student_follows_the_global_seed():
    teacher = tiny_unet_teacher().model
    torch.manual_seed(3)
    a = fresh_student_like(teacher)
    torch.manual_seed(3)
    b = fresh_student_like(teacher)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


class Scaled(nn.Module):
    """A layer with a bare parameter and no reset_parameters."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.gain = nn.Parameter(torch.ones(2))


def test_a_parameter_no_module_can_reset_is_named():
    with pytest.raises(ValueError, match=r"cannot re-initialise \['gain'\]"):
        fresh_student_like(Scaled())


def test_student_fresh_config_builds_a_reinitialised_copy(cache_dir, tmp_path):
    cfg = compose_config("train", [*TINY_RUN, "student=fresh"], tmp_path)
    teacher = build_teacher(cfg, build_datamodule(cfg))
    student = build_student(cfg, teacher)
    copied = compose_config("train", [*TINY_RUN], tmp_path)
    assert copied.student.init == "teacher" and cfg.student.init == "fresh"
    ours, theirs = student.state_dict(), teacher.model.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    convs = [k for k in ours if k.endswith("conv1.weight")]
    assert convs and all(not torch.equal(ours[k], theirs[k]) for k in convs)


def test_student_fresh_without_a_teacher_network_fails_clearly(cache_dir, tmp_path):
    cfg = compose_config("train", ["dataset=gmm", "teacher=gmm_exact", "student=fresh", "logger=csv"], tmp_path)
    with pytest.raises(ConfigError, match="no network to copy"):
        build_student(cfg, build_teacher(cfg, build_datamodule(cfg)))
