"""Every method that states a ``SamplingPlan`` samples exactly as that plan says, stepped the way
diffusers' ``FlowMatchEulerDiscreteScheduler`` steps it (what an export reproduces)."""

from __future__ import annotations

import pytest
import torch

from distill.build import build_method
from distill.core.samplers import SamplingPlan
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from tests.conftest import compose_config

PLANNED = ["progressive", "reflow", "consistency", "ict", "ect", "scd", "sct", "pcm", "dmd2", "gdd", "rcm"]


def scheduler_steps(plan: SamplingPlan, noise: torch.Tensor, fresh: list[torch.Tensor]) -> torch.Tensor:
    """The scheduler's own arithmetic: ``x0 = x - sigma v``, then an Euler step, or (stochastic
    sampling) ``(1 - sigma_next) x0 + sigma_next noise``."""
    sigmas = torch.tensor(plan.sigmas, dtype=torch.float64).to(noise)
    x = sigmas[0] * noise
    for i in range(len(sigmas) - 1):
        v = plan.network(x, sigmas[i].expand(x.shape[0]))
        if plan.renoise:
            x = (1 - sigmas[i + 1]) * (x - sigmas[i] * v) + sigmas[i + 1] * fresh[i]
        else:
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("nfe", [1, 2])
def test_sample_follows_the_plan(tmp_path, name, nfe):
    method = build_method(compose_config("train", [f"method={name}"], tmp_path))
    torch.manual_seed(0)
    student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1)))
    plan = method.sampling_plan(student, nfe)
    assert plan is not None and plan.sigmas[-1] == 0.0 and len(plan.sigmas) == nfe + 1
    noise = torch.randn(6, 2)
    fresh = [torch.randn(6, 2) for _ in range(nfe)]
    with torch.no_grad():
        expected = method.sample(student, noise, nfe, lambda i: fresh[i])
        torch.testing.assert_close(scheduler_steps(plan, noise, fresh), expected, rtol=1e-5, atol=1e-6)
