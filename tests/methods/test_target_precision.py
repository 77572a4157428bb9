"""Consistency targets are computed in fp32 under bf16-mixed (the precision policy of docs/recipes.md):
the stop-gradient branch (teacher step and target network) runs with autocast off, the prediction
under it. ECT's last-stage gap is 1/256 of the range, bf16's own relative precision."""

import pytest
import torch
from torch import nn

from distill.core.gmm import ring_mixture
from distill.methods import ConsistencyDistillation, ConsistencyTraining, PhasedConsistency
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import GMMTeacher


class AutocastRecorder(nn.Module):
    """A velocity model that records, per call, whether gradients and autocast were on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = VelocityModel(TimeMLP((2,), width=16, depth=1))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x, s):
        self.calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.inner(x, s)


METHODS = {
    "consistency": lambda: ConsistencyDistillation(num_scales=10, ema_target=0.0),
    "ect": lambda: ConsistencyTraining(schedule="ect"),
    "pcm": lambda: PhasedConsistency(phases=2, num_euler_timesteps=10, target="online"),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_stop_gradient_branch_runs_without_autocast(name):
    method, student = METHODS[name](), AutocastRecorder()
    method.set_budget(100)
    teacher = GMMTeacher(ring_mixture())
    x0 = teacher.sample_data(8).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.loss("student", x0, teacher, student, step=0)["loss"]
    assert torch.isfinite(loss)
    assert (True, True) in student.calls, "the prediction runs under autocast"
    assert (False, True) not in student.calls, "a target was computed in bf16"
    assert (False, False) in student.calls
