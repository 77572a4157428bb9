"""TrigFlow view of a velocity model: exact against the process, the prediction kinds and the exact flow."""

import math

import torch

from distill.core.gmm import ring_mixture
from distill.core.prediction import from_x0_eps, to_x0_eps, velocity_to_x0
from distill.core.process import TrigFlow
from distill.core.samplers import sample_heun
from distill.core.trigflow import (
    fm_time,
    sample_trig_time,
    trig_consistency,
    trig_consistency_fn,
    trig_F,
    trig_noise,
    trig_time,
)
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import GMMTeacher

SD = 0.5


def _model() -> VelocityModel:
    torch.manual_seed(0)
    return VelocityModel(TimeMLP((3,), width=32, depth=2)).double()


def _times(n: int = 6) -> torch.Tensor:
    return torch.linspace(0.05, 0.5 * math.pi - 0.01, n, dtype=torch.float64)


def test_time_and_state_agree_with_the_trigflow_process():
    t = _times()
    process = TrigFlow(sigma_data=SD)
    torch.testing.assert_close(fm_time(t, SD), process.to_fm_time(t), atol=1e-14, rtol=0)
    torch.testing.assert_close(trig_time(SD * torch.tan(t), SD), t, atol=1e-12, rtol=0)
    x0, eps = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    x_t = trig_noise(x0, SD * eps, t)
    torch.testing.assert_close(x_t, process.alpha(t)[:, None] * x0 + process.sigma(t)[:, None] * eps)


def test_F_is_the_trig_prediction_of_the_models_x0_and_eps():
    model, t = _model(), _times()
    x_t = torch.randn(6, 3, dtype=torch.float64)
    process = TrigFlow(sigma_data=SD)
    s, x_s = process.to_fm_time(t), process.to_fm_state(x_t, t)
    x0, eps = to_x0_eps("flow", model(x_s, s), x_s, 1 - s, s)
    expected = from_x0_eps("trig", x0, eps, torch.cos(t), SD * torch.sin(t), SD)
    torch.testing.assert_close(trig_F(model, x_t / SD, t, SD), expected, atol=1e-12, rtol=0)


def test_consistency_function_is_the_fm_data_estimate_and_identity_at_zero():
    model, t = _model(), _times()
    x_t = torch.randn(6, 3, dtype=torch.float64)
    process = TrigFlow(sigma_data=SD)
    s, x_s = process.to_fm_time(t), process.to_fm_state(x_t, t)
    torch.testing.assert_close(trig_consistency_fn(model, x_t, t, SD), velocity_to_x0(x_s, s, model(x_s, s)))
    zero = torch.zeros(6, dtype=torch.float64)
    torch.testing.assert_close(trig_consistency_fn(model, x_t, zero, SD), x_t, atol=1e-14, rtol=0)
    # One-step generation at t = pi/2 is -sigma_d F (docs/methods.md 4.1).
    half_pi = torch.full((6,), 0.5 * math.pi, dtype=torch.float64)
    F = trig_F(model, x_t / SD, half_pi, SD)
    torch.testing.assert_close(trig_consistency(x_t, half_pi, F, SD), -SD * F, atol=1e-12, rtol=0)


def test_exact_teacher_F_is_the_posterior_velocity_in_trigflow():
    """sigma_d F = E[dx_t/dt | x_t] = cos t sigma_d E[eps|x_t] - sin t E[x0|x_t], straight from the mixture."""
    teacher = GMMTeacher(ring_mixture())
    t = _times(8)
    x_t = trig_noise(teacher.sample_data(8).double(), SD * torch.randn(8, 2, dtype=torch.float64), t)
    x0, eps = teacher.mixture.posterior(x_t, torch.cos(t), SD * torch.sin(t))
    expected = torch.cos(t)[:, None] * SD * eps - torch.sin(t)[:, None] * x0
    torch.testing.assert_close(SD * trig_F(teacher, x_t / SD, t, SD), expected, atol=1e-10, rtol=0)


def test_exact_teacher_F_is_the_time_derivative_of_its_flow():
    """Central difference of the exact ODE trajectory, integrated in FM time and mapped to TrigFlow."""
    teacher = GMMTeacher(ring_mixture())
    process = TrigFlow(sigma_data=SD)
    t, h = torch.full((5,), 0.9, dtype=torch.float64), 1e-3
    x_t = trig_noise(teacher.sample_data(5).double(), SD * torch.randn(5, 2, dtype=torch.float64), t)

    def flow_to(t_new: float) -> torch.Tensor:
        grid = torch.linspace(float(fm_time(t[:1], SD)), float(fm_time(torch.tensor([t_new]), SD)), 9)
        x_s = sample_heun(teacher, process.to_fm_state(x_t, t), grid.double())
        return process.from_fm_state(x_s, grid[-1].expand(5).double())

    dxdt = (flow_to(0.9 + h) - flow_to(0.9 - h)) / (2 * h)
    torch.testing.assert_close(SD * trig_F(teacher, x_t / SD, t, SD), dxdt, atol=1e-5, rtol=0)


def test_proposal_is_lognormal_in_sigma():
    torch.manual_seed(0)
    t = sample_trig_time(20000, -1.0, 1.4, SD)
    log_sigma = torch.log(SD * torch.tan(t))
    assert 0 < t.min() and t.max() < 0.5 * math.pi
    assert abs(log_sigma.mean() + 1.0) < 0.05 and abs(log_sigma.std() - 1.4) < 0.05
