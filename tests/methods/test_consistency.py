"""Consistency distillation: boundary condition, the teacher step, and a flow map that learns."""

import torch

from distill.core.gmm import ring_mixture
from distill.core.samplers import sample_heun
from distill.methods.consistency import ConsistencyDistillation, consistency_fn, heun_step
from distill.nets.denoiser import VelocityModel
from distill.nets.mlp import TimeMLP
from distill.teachers import GMMTeacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    evaluation_noise,
    exact_endpoints,
    ring_teacher_and_data,
    sample_error,
    train_method,
)


def test_boundary_condition_holds_for_any_network():
    model = VelocityModel(TimeMLP((2,), width=16, depth=1))
    x = torch.randn(7, 2)
    torch.testing.assert_close(consistency_fn(model, x, torch.zeros(7)), x)


def test_teacher_step_is_one_heun_step():
    teacher = GMMTeacher(ring_mixture())
    x = torch.randn(5, 2, dtype=torch.float64)
    s, s_next = torch.full((5,), 0.7, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    expected = sample_heun(teacher, x, torch.tensor([0.7, 0.4], dtype=torch.float64))
    torch.testing.assert_close(heun_step(teacher, x, s, s_next), expected)


def test_learned_flow_map_error_against_the_exact_flow_shrinks():
    """One-step samples approach the exact teacher's ODE endpoints (analytic GMM teacher)."""
    teacher, data = ring_teacher_and_data()
    student = VelocityModel(TimeMLP((2,), width=128, depth=3))
    method = ConsistencyDistillation(num_scales=18, ema_target=0.9)
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise, start=float(method.sample_times(1)[0]))
    before = sample_error(method, student, noise, exact, nfe=1)
    train_method(method, teacher, student, data, steps=400, lr=2e-3)
    after = sample_error(method, student, noise, exact, nfe=1)
    assert after < 0.25 * before, (before, after)


def test_multistep_sampling_is_reproducible_per_sample():
    method = ConsistencyDistillation()
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    assert_sampling_reproducible_per_sample(method, student, nfe=3)
