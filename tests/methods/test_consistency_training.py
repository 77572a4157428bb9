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
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
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


def test_ect_targets_at_r_zero_are_the_data_even_where_the_network_is_undefined():
    # locuslab/ect training/loss.py:70-79: rows with r = 0 take y itself as the target (an x0-predicting
    # network has no velocity at sigma = 0, and 0 * nan is nan).
    class UndefinedAtCleanData(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = VelocityModel(TimeMLP((2,), width=16, depth=1), "fm").double()

        def forward(self, x, s):
            return torch.where((s == 0)[:, None], torch.nan, self.inner(x, s))

    torch.manual_seed(0)
    method = ConsistencyTraining(schedule="ect", huber_c=0.0)
    method.set_budget(1000)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    t, r = method.sigma_pairs(256, 0, x0.device)
    assert bool((r == 0).any()), "stage 0 draws r = 0 for most small t"
    terms = method.loss("student", x0, None, UndefinedAtCleanData(), step=0)
    assert torch.isfinite(terms["loss"])


def test_ect_stages_in_images_follow_the_global_batch_not_the_budget():
    # run_ecm.sh: a stage is 250 ticks of 12.8 kimg = 3.2 Mimg, 25k iterations at batch 128, with no last stage.
    method = ConsistencyTraining(schedule="ect", num_stages=None, images_per_stage=3_200_000)
    method.set_budget(400_000)
    with pytest.raises(RuntimeError, match="global batch"):
        method.stage(0)
    method.set_batch(128)
    assert [method.stage(s) for s in (0, 24_999, 25_000, 199_999, 399_999)] == [0, 0, 1, 7, 15]
    method.set_batch(512)  # four times the batch: four times as fast through the stages
    assert method.stage(25_000) == 4


def test_stage_options_must_name_exactly_one_schedule():
    with pytest.raises(ValueError, match="images_per_stage"):
        ConsistencyTraining(schedule="ect", num_stages=8, images_per_stage=3_200_000)
    with pytest.raises(ValueError, match="num_stages"):
        ConsistencyTraining(schedule="ect", num_stages=None)


def test_ect_sampling_sigmas_put_the_two_step_point_at_ects_mid_t():
    method = ConsistencyTraining(schedule="ect", sampling_sigmas=[0.821])
    times = method.sample_times(2)
    torch.testing.assert_close(times[1], torch.tensor(0.821 / 1.821, dtype=torch.float64))


def tiny_vp_student():
    from distill.nets.edm import VPPrecond
    from distill.teachers.edm import EDMVelocity

    torch.manual_seed(0)
    net = VPPrecond(
        img_resolution=8,
        img_channels=1,
        model_channels=8,
        channel_mult=[1],
        num_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    )
    return EDMVelocity(net).double()


def test_edm_preconditioning_rewraps_the_vp_unet_as_ects_ecmprecond():
    """locuslab/ect training/networks.py:697-718 (training branch): D = c_skip x + c_out F(c_in x, ln(sigma)/4)."""
    student = tiny_vp_student()
    inner = student.net.model
    names = sorted(n for n, _ in student.named_parameters())
    method = ConsistencyTraining(schedule="ect", student_precond="edm")
    wrapped = method.prepare_student(student)
    assert wrapped.net.model is inner and sorted(n for n, _ in wrapped.named_parameters()) == names
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.821, 80.0], dtype=torch.float64)
    s4 = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = 0.25 / (s4**2 + 0.25), s4 * 0.5 / (s4**2 + 0.25).sqrt(), 1 / (0.25 + s4**2).sqrt()
    expected = c_skip * x + c_out * inner(c_in * x, sigma.log() / 4, class_labels=None)
    torch.testing.assert_close(wrapped.net(x, sigma), expected)
    with pytest.raises(ValueError, match="student_precond"):
        method.prepare_student(VelocityModel(TimeMLP((2,), width=8, depth=1)))
