"""Every method that states a ``SamplingPlan`` samples exactly as that plan says (what an export
to a diffusers scheduler reproduces)."""

from __future__ import annotations

import pytest
import torch

from distill.build import build_method
from distill.methods.base import follow_plan
from distill.nets.denoiser import VelocityModel
from distill.nets.mlp import TimeMLP
from tests.conftest import compose_config

PLANNED = ["progressive", "reflow", "consistency", "ict", "ect", "scd", "sct", "pcm", "dmd2", "gdd", "rcm"]


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
        torch.testing.assert_close(follow_plan(plan, noise, lambda i: fresh[i]), expected, rtol=1e-5, atol=1e-6)
