"""Consistency distillation: boundary condition, the teacher step, and a flow map that learns."""

import pytest
import torch

from distill.core.gmm import ring_mixture
from distill.core.prediction import consistency_fn
from distill.core.samplers import edm_heun_step, heun_step, sample_heun
from distill.methods.consistency import ConsistencyDistillation
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
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


def test_mu_zero_target_is_the_online_student_under_stop_grad():
    """CM CIFAR-10's theta^- = stopgrad(theta): no copy is kept, nothing lags, the target has no grad."""
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method = ConsistencyDistillation(num_scales=6, ema_target=0.0)
    method.attach(teacher, student)
    out = method.loss("student", teacher.sample_data(8), teacher, student, 0)
    out["loss"].backward()
    method.on_step_end(0, student)
    assert method.target is None and not any(k.startswith("target") for k in method.state_dict())
    assert method._target_net(student) is student


def test_attach_builds_the_ema_target_that_a_checkpoint_loads_into():
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method = ConsistencyDistillation(num_scales=6, ema_target=0.5)
    with pytest.raises(RuntimeError, match="built by Method.attach"):
        method.loss("student", teacher.sample_data(8), teacher, student, 0)
    method.attach(teacher, student)
    assert all(torch.equal(a, b) for a, b in zip(method.target.parameters(), student.parameters(), strict=True))
    assert not any(p.requires_grad for p in method.target.parameters())
    method.loss("student", teacher.sample_data(8), teacher, student, 0)["loss"].backward()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    method.on_step_end(0, student)
    state = method.state_dict()
    fresh = ConsistencyDistillation(num_scales=6, ema_target=0.5)
    fresh.attach(teacher, VelocityModel(TimeMLP((2,), width=16, depth=1)))
    fresh.load_state_dict(state)  # strict: attach gave every target.* key its home
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


def test_ema_target_outside_zero_one_is_refused_with_the_key():
    with pytest.raises(ValueError, match="ema_target"):
        ConsistencyDistillation(ema_target=1.0)


def test_explicit_sampling_sigmas_override_the_grid_where_given():
    method = ConsistencyDistillation(sampling_sigmas=[0.821])
    times = method.sample_times(2)
    torch.testing.assert_close(times[1], torch.tensor(0.821 / 1.821, dtype=torch.float64))
    assert times[-1] == 0 and len(times) == 3
    # Three steps need two re-noising points: back to the grid's interior.
    grid_only = ConsistencyDistillation()
    torch.testing.assert_close(method.sample_times(3), grid_only.sample_times(3))
    with pytest.raises(ValueError, match="sampling_sigmas"):
        ConsistencyDistillation(sampling_sigmas=[0.5, 0.821])


def test_edm_heun_euler_part_is_the_fm_euler_step_and_the_correction_differs():
    """Both solvers share the DDIM Euler predictor; only Heun's average (d vs v) differs."""
    teacher = GMMTeacher(ring_mixture())
    x = torch.randn(5, 2, dtype=torch.float64)
    s, s_next = torch.full((5,), 0.7, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    fm, edm = heun_step(teacher, x, s, s_next), edm_heun_step(teacher, x, s, s_next)
    assert not torch.allclose(fm, edm)
    # A teacher predicting one x0 = c everywhere has straight DDIM paths: both solvers are exact on it.
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    constant_x0 = lambda x, s: (x - c) / s[:, None]  # noqa: E731  (v = (x_s - x0) / s)
    exact = (1 - 0.4) * c + 0.4 * (x - (1 - 0.7) * c) / 0.7
    torch.testing.assert_close(edm_heun_step(constant_x0, x, s, s_next), exact)
    torch.testing.assert_close(heun_step(constant_x0, x, s, s_next), exact)
