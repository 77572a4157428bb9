"""AnyFlow: the time shares, the shortcut rollout, the stage switch, which networks learn in each
phase, and one student that samples the ring mixture well at every NFE."""

import pytest
import torch
from hydra.utils import instantiate

from distill.core.anyflow import (
    draw_rollout,
    rescaled_to_diffusion,
    sample_flowmap_times,
    shortcut_rollout,
    time_weight,
    time_weight_table,
)
from distill.core.errors import ConfigError
from distill.methods import AnyFlow
from distill.metrics.sliced_wasserstein import sliced_wasserstein
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.average_velocity import AverageVelocityModel, average_velocity_from
from distill.students.flow_map import student_from_teacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    evaluation_noise,
    exact_endpoints,
    has_gradients,
    regress_velocity,
    ring_teacher_and_data,
    tiny_unet_teacher,
    train_phases,
)


def test_time_pairs_have_the_diffusion_and_consistency_shares_by_row():
    r, t, is_diffusion = sample_flowmap_times(16, 0.5, 0.25, shift=3.0)
    assert is_diffusion.tolist() == [True] * 8 + [False] * 8
    assert torch.equal(r[:8], t[:8]) and (r[8:12] == 0).all() and (r[12:] < t[12:]).all()
    assert ((t >= 0) & (t <= 1)).all()
    with pytest.raises(ConfigError, match="diffusion_ratio"):
        sample_flowmap_times(4, 0.8, 0.4)


def test_beta08_weight_vanishes_at_both_ends_and_averages_one_on_its_grid():
    grid, weights = time_weight_table("beta08")
    assert weights[0] == 0 and weights[-1] == 0 and abs(weights.mean().item() - 1000 / 1001) < 1e-12
    t = torch.tensor([0.0, 0.5, 0.9996])
    torch.testing.assert_close(time_weight(t, grid, weights), weights[[1000, 500, 0]].float())
    with pytest.raises(ConfigError, match="time_weight"):
        time_weight_table("cosine")


def test_off_diagonal_rows_are_rescaled_to_the_diffusion_mean_without_gradient():
    loss = torch.tensor([1.0, 3.0, 8.0, 0.5], requires_grad=True)
    out = rescaled_to_diffusion(loss, torch.tensor([True, True, False, False]))
    torch.testing.assert_close(out.detach(), torch.tensor([1.0, 3.0, 2.0, 2.0]), atol=1e-4, rtol=0)
    out.sum().backward()
    torch.testing.assert_close(loss.grad, torch.tensor([1.0, 1.0, 2 / 8, 2 / 0.5]), atol=1e-4, rtol=1e-4)
    same = torch.tensor([1.0, 2.0])
    assert torch.equal(rescaled_to_diffusion(same, torch.tensor([False, False])), same)  # nothing to scale to


def test_shortcut_rollout_takes_at_most_three_jumps_to_the_same_end():
    calls = []

    def linear_map(x, s, s_next):  # the exact flow map of dx/ds = x: jumps compose
        calls.append(1)
        return x * torch.exp(s_next - s)[:, None]

    grid = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    for k, n_calls in ((0, 2), (3, 3), (7, 2)):
        calls.clear()
        torch.testing.assert_close(shortcut_rollout(linear_map, x, grid, k), x * torch.exp(torch.tensor(-1.0)))
        assert len(calls) == n_calls
    calls.clear()
    shortcut_rollout(linear_map, x, grid[[0, -1]], 0)
    assert len(calls) == 1


def test_rollout_draws_cover_every_nfe_and_step():
    gen = torch.Generator().manual_seed(0)
    draws = {draw_rollout([1, 4], gen) for _ in range(200)}
    assert draws == {(1, 0), (4, 0), (4, 1), (4, 2), (4, 3)}


def test_nfe_shifts_move_only_their_step_counts_sampling_grid_not_the_rollouts():
    method = AnyFlow(sampling_shift=2.0, nfe_shifts={2: 0.25})
    torch.testing.assert_close(method.sample_times(2), torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(method.sample_times(1), torch.tensor([1.0, 0.0], dtype=torch.float64))
    four = method.sample_times(4)  # sampling_shift's grid: s t / (1 + (s - 1) t)
    torch.testing.assert_close(four, torch.tensor([1.0, 6 / 7, 2 / 3, 0.4, 0.0], dtype=torch.float64))
    seen = []

    def recording_student(z, r, t):
        seen.append(float(t[0]))
        return torch.zeros_like(z)

    method.rollout(recording_student, torch.randn(2, 1, 4, 4), nfe=2, k=1)  # a 2-step rollout in training
    assert seen == [1.0, pytest.approx(2 / 3)]  # its middle is sampling_shift's (2/3), not nfe_shifts' (0.2)


def test_nfe_shifts_take_a_command_line_mapping(compose_train):
    cfg = compose_train("method=anyflow", "method.objective.nfe_shifts={2:0.3}")
    method = instantiate(cfg.method.objective)
    assert method.sample_times(2)[1].item() == pytest.approx(0.15 / 0.65)  # shift(0.5, 0.3)
    assert method.sample_times(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_stage_switch_phases_lr_and_optimizer_reset():
    method = AnyFlow(stage2_start=0.25, stage2_lr_scale=0.1, fake_lr_ratio=2.0)
    method.set_budget(100)
    assert [tuple(method.phases(s)) for s in (0, 24, 25)] == [("student",), ("student",), ("student", "fake_score")]
    assert method.lr_scale("student", 24) == 1.0 and method.lr_scale("student", 25) == 0.1
    assert method.lr_scale("fake_score", 25) == pytest.approx(0.2)
    assert [s for s in range(100) if method.on_step_end(s, None)] == [24]
    assert method.on_step_end(24, None) == ["student"]
    only_two = AnyFlow(stage2_start=0)
    only_two.set_budget(100)
    assert only_two.phases(0) == ("student", "fake_score") and not any(only_two.on_step_end(s, None) for s in range(5))
    steps = AnyFlow(stage2_start=30)
    steps.set_budget(1000)
    assert steps.stage(29) == 1 and steps.stage(30) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stage2_start": -1}, "stage2_start"),
        ({"rollout_nfes": [0, 2]}, "rollout_nfes"),
        ({"rollout_nfes": []}, "rollout_nfes"),
        ({"velocity": "ema"}, "velocity"),
        ({"min_time": 0.5, "max_time": 0.4}, "min_time"),
        ({"fd_step": 0}, "fd_step"),
        ({"sampling_shift": 0}, "sampling_shift"),
        ({"nfe_shifts": {2: -1.0}}, r"nfe_shifts\[2\]"),
        ({"consistency_ratio": 0.6}, "consistency_ratio"),
    ],
)
def test_bad_options_are_refused_with_their_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AnyFlow(**kwargs)


def test_each_phase_trains_only_its_network():
    teacher = tiny_unet_teacher()
    method = AnyFlow(stage2_start=1, rollout_nfes=[2, 4])
    student = method.prepare_student(student_from_teacher(teacher.model))
    assert isinstance(student, AverageVelocityModel)
    method.attach(teacher, student)
    x0 = torch.randn(4, 1, 8, 8)
    stage1 = method.loss("student", x0, teacher, student, 0)
    assert set(stage1) == {"loss", "flowmap", "mse"}
    stage1["loss"].backward()
    assert has_gradients(student) and not has_gradients(method.fake_score)
    student.zero_grad(set_to_none=True)
    with torch.no_grad():  # a fake score that is still the teacher would give no DM gradient
        for p in method.fake_score.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stage2 = method.loss("student", x0, teacher, student, 1)
    assert {"dm", "flowmap", "nfe"} <= set(stage2) and stage2["dm"] > 0
    stage2["loss"].backward()
    assert has_gradients(student) and not has_gradients(method.fake_score)
    student.zero_grad(set_to_none=True)
    method.loss("fake_score", x0, teacher, student, 1)["loss"].backward()
    assert has_gradients(method.fake_score) and not has_gradients(student)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_both_stages_bring_few_step_samples_near_the_ring_mixture():
    """A small, fast run of both stages from a rough diffusion model: 1 NFE comes far closer to the data
    and 2 and 4 NFE stay near it. (Whether 100 steps also improve 2 NFE depends on the reduction order:
    0.29 -> 0.20 on one thread, -> 0.23 on two; the slow test trains long enough to ask for it.)"""
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    student = average_velocity_from(VelocityModel(TimeMLP((2,), width=64, depth=2)))
    regress_velocity(student.velocity, student.parameters(), teacher, data, steps=200)
    method = AnyFlow(stage2_start=40, rollout_nfes=[1, 2, 4], velocity="teacher")
    noise = evaluation_noise(1000)

    def distances() -> list[float]:
        return [sliced_wasserstein(method.sample(student, noise, n), data[:1000]) for n in (1, 2, 4)]

    before = distances()
    train_phases(method, teacher, student, data, steps=100, lr=1e-3, batch_size=128, betas=(0.0, 0.999))
    after = distances()
    assert after[0] < 0.25 * before[0], (before, after)
    assert after[1] < 1.25 * before[1] and after[2] < 1.5 * before[2], (before, after)


@pytest.mark.slow
def test_one_student_samples_the_ring_mixture_well_at_every_nfe():
    """Both stages on the analytic ring mixture, from a rough diffusion model: the one student's
    samples at 2, 4 and 8 steps come close to the exact teacher's, and 1 NFE from far off nearer."""
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    student = average_velocity_from(VelocityModel(TimeMLP((2,), width=128, depth=3)))
    regress_velocity(student.velocity, student.parameters(), teacher, data, steps=300)
    method = AnyFlow(stage2_start=100, rollout_nfes=[1, 2, 4, 8], velocity="teacher")
    noise = evaluation_noise(2000)
    exact = sliced_wasserstein(exact_endpoints(teacher, noise).float(), data[:2000])  # the teacher's own level

    def distances() -> list[float]:
        return [sliced_wasserstein(method.sample(student, noise, n), data[:2000]) for n in (1, 2, 4, 8)]

    before = distances()
    train_phases(method, teacher, student, data, steps=200, lr=5e-4, betas=(0.0, 0.999))
    after = distances()
    assert after[0] < 0.25 * before[0] and after[1] < 0.6 * before[1], (before, after)
    # 2, 4 and 8 NFE within 30% of the starting model's own 8-step samples (the exact teacher: `exact`);
    # 1 NFE ends near 0.27 from 1.33 on two threads, but above that bound: it depends on the reduction order
    assert max(after[1:]) < 1.3 * before[3], (exact, before, after)
    assert_sampling_reproducible_per_sample(method, student, nfe=4)
