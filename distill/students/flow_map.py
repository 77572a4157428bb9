"""Students made from the teacher's network.

(The flow maps a few-step student samples with live in ``distill.core.samplers``.)
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from distill.nets.features import has_parameters

log = logging.getLogger(__name__)


def student_from_teacher(teacher_model: nn.Module) -> nn.Module:
    """A trainable deep copy of the teacher's velocity model (the usual initialisation)."""
    student = copy.deepcopy(teacher_model)
    return student.train().requires_grad_(True)


def fresh_student_like(teacher_model: nn.Module) -> nn.Module:
    """The teacher's architecture with new random weights (``student.init: fresh``): a student
    that starts from none of the teachers, so that comparing teachers does not favour the copied one.

    Every module re-draws its own parameters with ``reset_parameters`` (PyTorch's default
    initialisation, from the global RNG).

    Raises:
        ValueError: a parameter belongs to no module that can reset it (a custom layer), so its
            teacher value would survive in the "fresh" student.
    """
    student = student_from_teacher(teacher_model)
    reset: set[int] = set()
    for module in student.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
    kept = [name for name, p in student.named_parameters() if id(p) not in reset]
    if kept:
        raise ValueError(
            f"cannot re-initialise {kept[:3]} ({len(kept)} parameters; their modules have no "
            "reset_parameters): use student.init=teacher, or student.init=random with a student.net"
        )
    return student


def fake_score_copy(teacher: nn.Module, student: nn.Module) -> nn.Module:
    """A trainable copy of the teacher's network for a fake-score net (DMD2, SiD), or of the
    student's when the teacher is analytic (no parameters, e.g. the exact Gaussian-mixture field)."""
    source = getattr(teacher, "model", teacher)
    if not has_parameters(source):
        log.warning("the teacher has no network to copy: the fake-score net starts as a copy of the student")
        source = student
    return student_from_teacher(source)
