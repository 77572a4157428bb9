"""Flow maps: how a student moves a state from time s to an earlier time s_next in one call.

Every few-step sampler walks a grid with one of these (``distill.core.samplers.sample_flow_map``).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from distill.core.tensors import append_dims


def ddim_step(model: nn.Module, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One DDIM (= flow-matching Euler) step of a velocity model from ``s`` to ``s_next`` (both (B,))."""
    return x + append_dims(s_next - s, x.ndim) * model(x, s)


class EulerFlowMap(nn.Module):
    """``ddim_step`` as a flow map: the map PD students learn."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
        return ddim_step(self.model, x, s, s_next)


def student_from_teacher(teacher_model: nn.Module) -> nn.Module:
    """A trainable deep copy of the teacher's velocity model (the usual initialisation)."""
    student = copy.deepcopy(teacher_model)
    return student.train().requires_grad_(True)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode that takes no gradient: targets, snapshots and EMA copies."""
    return copy.deepcopy(model).eval().requires_grad_(False)
