"""Consistency training (iCT, ECT): curricula, pairs, the teacher-free loss, and learning."""

import math

import pytest
import torch

from distill.methods.consistency_training import (
    ConsistencyTraining,
    ect_r,
    ict_num_scales,
    karras_sigmas,
    lognormal_index_probs,
)
from distill.nets.denoiser import VelocityModel
from distill.nets.mlp import TimeMLP
from tests.methods.learning import (
    evaluation_noise,
    exact_endpoints,
    regress_velocity,
    ring_teacher_and_data,
    sample_error,
    train_method,
)


def test_ict_curriculum_doubles_from_s0_to_s1():
    total = 400_000
    k_prime = math.floor(total / (math.log2(1280 // 10) + 1))  # iCT's K' = 50k for K = 400k
    assert ict_num_scales(0, total) == 11
    assert ict_num_scales(k_prime - 1, total) == 11
    assert ict_num_scales(k_prime, total) == 21
    assert ict_num_scales(total - 1, total) == 1281


def test_karras_sigmas_span_sigma_min_to_max_increasing():
    sigmas = karras_sigmas(11)
    assert len(sigmas) == 11
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([0.002, 80.0], dtype=torch.float64))
    assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_lognormal_index_probabilities_match_the_cdf_differences():
    sigmas = karras_sigmas(11)
    probs = lognormal_index_probs(sigmas, -1.1, 2.0)
    normal = torch.distributions.Normal(-1.1, 2.0)
    expected = normal.cdf(sigmas[1:].log()) - normal.cdf(sigmas[:-1].log())
    torch.testing.assert_close(probs, expected / expected.sum())


def test_ect_gap_shrinks_by_q_per_stage_and_r_is_nonnegative():
    t = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    gaps = [t - ect_r(t, stage, q=2.0) for stage in range(3, 6)]
    torch.testing.assert_close(gaps[1] / gaps[0], torch.full_like(t, 0.5))
    torch.testing.assert_close(gaps[2] / gaps[1], torch.full_like(t, 0.5))
    assert bool((ect_r(t, 0) >= 0).all())  # stage 0 clamps r = 0 where the gap would pass t


@pytest.mark.parametrize("schedule", ["ict", "ect"])
def test_pairs_are_ordered_and_stages_follow_the_budget(schedule):
    method = ConsistencyTraining(schedule=schedule, num_stages=4)
    method.set_budget(100)
    assert [method.stage(s) for s in (0, 24, 25, 99)] == [0, 0, 1, 3]
    t, r = method.sigma_pairs(512, 50, torch.device("cpu"))
    assert t.shape == r.shape == (512,)
    assert bool((t > r).all()) and bool((r >= 0).all())


def test_loss_never_calls_the_teacher_and_reaches_the_student():
    class Forbidden(torch.nn.Module):
        def forward(self, x, s):
            raise AssertionError("consistency training must not evaluate the teacher")

    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    terms = ConsistencyTraining(schedule="ect").loss("student", torch.randn(32, 2), Forbidden(), student, 0)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert all(p.grad is not None for p in student.parameters())


def test_target_at_r_zero_is_the_clean_data():
    """ECT: where r = 0 the target is x0 itself, since f(x, 0) = x."""
    method = ConsistencyTraining(schedule="ect", huber_c=0.0)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method.sigma_pairs = lambda batch, step, device: (torch.full((batch,), 1.0), torch.zeros(batch))
    x0 = torch.randn(8, 2)
    torch.manual_seed(0)
    loss = method.loss("student", x0, None, student, 0)["distance"]
    torch.manual_seed(0)
    eps = torch.randn_like(x0)
    pred = student(0.5 * x0 + 0.5 * eps, torch.full((8,), 0.5))
    expected = ((0.5 * x0 + 0.5 * eps) - 0.5 * pred - x0).norm(dim=1).mean()
    torch.testing.assert_close(loss, expected)


def test_ect_from_a_rough_teacher_copy_moves_one_step_samples_to_the_exact_flow():
    """ECT on 2-D data: the 1-step error against the exact ODE endpoint shrinks (no teacher calls)."""
    teacher, data = ring_teacher_and_data()
    student = VelocityModel(TimeMLP((2,), width=128, depth=3))
    regress_velocity(student, student.parameters(), teacher, data, steps=200)  # ECT's starting point
    method = ConsistencyTraining(schedule="ect", num_stages=4)
    method.set_budget(400)
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise, start=float(method.sample_times(1)[0]))
    before = sample_error(method, student, noise, exact, nfe=1)
    train_method(method, None, student, data, steps=400, lr=1e-3)
    after = sample_error(method, student, noise, exact, nfe=1)
    assert after < 0.5 * before, (before, after)


def test_unknown_schedule_or_weighting_names_the_choices():
    with pytest.raises(ValueError, match="ict"):
        ConsistencyTraining(schedule="ctm")
    with pytest.raises(ValueError, match="inverse_gap"):
        ConsistencyTraining(weighting="edm")
