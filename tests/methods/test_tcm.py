"""TCM: the truncated range, the frozen stage-1 model, and learning from a short ECT run."""

import torch

from distill.core.time_sampling import sample_truncated_log_t
from distill.methods import ConsistencyTraining, TruncatedConsistency
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.two_stage import two_stage
from tests.methods.learning import (
    evaluation_noise,
    exact_endpoints,
    regress_velocity,
    ring_teacher_and_data,
    sample_error,
    train_method,
)


def test_times_stay_in_the_truncated_range_and_boundary_rows_sit_at_the_transition():
    method = TruncatedConsistency(transition=1.0, boundary_prob=0.25)
    t, r, boundary = method.draw_times(400, torch.device("cpu"))
    assert int(boundary.sum()) == 100
    assert bool((t >= 1.0).all()) and bool((t <= 80.0).all()) and bool((t > r).all())
    assert bool((r[boundary] < 1.0).all())  # the boundary rows' targets are the stage-1 model's
    torch.testing.assert_close(t[boundary], torch.full((100,), 1.0 + 1e-8, dtype=torch.float64))


def test_log_t_law_with_a_large_df_is_the_truncated_lognormal():
    generator = torch.Generator().manual_seed(0)
    sigma = sample_truncated_log_t(20_000, 0.5, 80.0, mean=0.0, std=1.0, df=1e6, generator=generator)
    normal = torch.distributions.Normal(0.0, 1.0)
    lo, hi = normal.cdf(torch.tensor(0.5).log()), normal.cdf(torch.tensor(80.0).log())
    median = normal.icdf((lo + hi) / 2).exp()
    assert abs(float(sigma.median()) - float(median)) < 0.03


def test_two_stage_model_switches_at_the_transition():
    def early(x, s):
        return torch.zeros_like(x)

    def late(x, s):
        return torch.ones_like(x)

    s = torch.tensor([0.2, 0.49, 0.5, 0.9])
    out = two_stage(early, late, 0.5)(torch.zeros(4, 2), s)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_only_the_student_learns_and_the_stage1_copy_stays_frozen():
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method = TruncatedConsistency()
    method.attach(None, student)
    before = [p.clone() for p in method.stage1.parameters()]
    terms = method.loss("student", torch.randn(64, 2), None, student, 0)
    terms["loss"].backward()
    assert set(terms) == {"loss", "consistency", "boundary", "distance"}
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.stage1.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, method.stage1.parameters(), strict=True))


def test_tcm_after_a_short_ect_run_moves_one_step_samples_towards_the_exact_flow():
    """Stage 1: a rough diffusion model tuned by 100 ECT steps. Stage 2: TCM from it, at FastGen's
    learning rate order (1e-4); the 1-step error against the exact ODE endpoint falls."""
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((2,), width=64, depth=2))
    regress_velocity(student, student.parameters(), teacher, data, steps=200)
    ect = ConsistencyTraining(schedule="ect", num_stages=4)
    ect.set_budget(100)
    train_method(ect, None, student, data, steps=100, lr=1e-3)
    method = TruncatedConsistency()
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise, start=float(method.sample_times(1)[0]))
    before = sample_error(method, student, noise, exact, nfe=1)
    train_method(method, None, student, data, steps=200, lr=1e-4)
    after = sample_error(method, student, noise, exact, nfe=1)
    assert after < 0.85 * before, (before, after)
