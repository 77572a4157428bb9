"""Phased consistency: phase edges, boundary condition, target, sampling, adversarial term, learning."""

import pytest
import torch
from torch import nn

from distill.core.gmm import ring_mixture
from distill.core.losses import elementwise_pseudo_huber
from distill.core.samplers import sample_euler
from distill.methods.pcm import (
    PhasedConsistency,
    phase_bounds,
    phase_edges,
    phased_consistency_fn,
    renoise_within_phase,
)
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

F64 = torch.float64


def mlp_student(width: int = 16, depth: int = 1) -> nn.Module:
    return VelocityModel(TimeMLP((2,), width=width, depth=depth)).double()


@pytest.mark.parametrize(
    ("num_steps", "phases", "expected"),
    [
        (50, 1, [0]),
        (50, 2, [0, 25]),
        (50, 3, [0, 16, 33]),
        (50, 4, [0, 12, 25, 37]),
        (50, 8, [0, 6, 12, 18, 25, 31, 37, 43]),
        (10, 10, list(range(10))),
    ],
)
def test_phase_edges_are_pcm_floor_linspace(num_steps, phases, expected):
    assert phase_edges(num_steps, phases).tolist() == expected


def test_phase_edges_refuse_impossible_phase_counts():
    for phases in (0, 51):
        with pytest.raises(ValueError, match="phases"):
            phase_edges(50, phases)


def test_phase_bounds_put_every_grid_point_in_one_half_open_phase():
    edges = phase_edges(50, 4)
    n = torch.arange(1, 51)
    lower, upper = phase_bounds(n, edges, 50)
    assert bool(((lower < n) & (n <= upper)).all())
    assert set(lower.tolist()) == {0, 12, 25, 37} and set(upper.tolist()) == {12, 25, 37, 50}
    pairs = {k: (lo, up) for k, lo, up in zip(n.tolist(), lower.tolist(), upper.tolist(), strict=True)}
    assert pairs[1] == (0, 12) and pairs[12] == (0, 12) and pairs[13] == (12, 25) and pairs[50] == (37, 50)


def test_boundary_condition_at_every_phase_edge():
    method = PhasedConsistency(phases=4, num_euler_timesteps=20)
    model = mlp_student()
    x = torch.randn(6, 2, dtype=F64)
    for edge in method.edges.tolist():
        s = torch.full((6,), float(method.times[edge]), dtype=F64)
        torch.testing.assert_close(phased_consistency_fn(model, x, s, s), x)


def test_target_is_the_teacher_euler_step_then_the_target_nets_phased_map():
    """Checked on the exact GMM teacher, with an EMA target that differs from the student."""
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    method = PhasedConsistency(phases=2, num_euler_timesteps=10, target="ema", ema_target=0.5)
    student = mlp_student()
    method.attach(teacher, student)
    target_net = method._target(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the student moves on; the target lags behind
    x0, eps = teacher.sample_data(8).double(), torch.randn(8, 2, dtype=F64)
    n = torch.tensor([1, 2, 5, 6, 7, 9, 10, 10])  # edges at 0 and 5: n = 1 and 6 step onto an edge
    pred, target, s_edge, s_upper = method.consistency_pair(x0, eps, n, teacher, student)

    times = method.times
    s, s_prev = times[n], times[n - 1]
    s_lo = torch.where(n <= 5, times[0], times[5])
    x_s = (1 - s[:, None]) * x0 + s[:, None] * eps
    x_prev = x_s + (s_prev - s)[:, None] * teacher(x_s, s)
    expected = x_prev + (s_lo - s_prev)[:, None] * target_net(x_prev, s_prev)
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(pred, x_s + (s_lo - s)[:, None] * student(x_s, s))
    torch.testing.assert_close(s_edge, s_lo)
    torch.testing.assert_close(s_upper, torch.where(n <= 5, times[5], times[10]))
    # Boundary condition in use: one step onto the edge makes the target the teacher's step itself.
    on_edge = (n == 1) | (n == 6)
    torch.testing.assert_close(target[on_edge], x_prev[on_edge])
    assert pred.requires_grad and not target.requires_grad


def test_online_target_is_the_student_itself():
    teacher = GMMTeacher(ring_mixture())
    method = PhasedConsistency(phases=2, num_euler_timesteps=10, target="online")
    student = mlp_student()
    x0, eps, n = teacher.sample_data(4).double(), torch.randn(4, 2, dtype=F64), torch.tensor([3, 4, 8, 9])
    pred, target, *_ = method.consistency_pair(x0, eps, n, teacher, student)
    # Same network at the next grid point: pred of n = target of... recompute by hand at s_{n-1}.
    times = method.times
    x_s = (1 - times[n][:, None]) * x0 + times[n][:, None] * eps
    x_prev = x_s + (times[n - 1] - times[n])[:, None] * teacher(x_s, times[n])
    s_lo = torch.where(n <= 5, times[0], times[5])
    torch.testing.assert_close(target, phased_consistency_fn(student, x_prev, times[n - 1], s_lo))
    assert method.target_net is None  # nothing extra to checkpoint
    method.on_step_end(0, student)


class PhasedOracle(nn.Module):
    """The exact phased map of a teacher's Euler grid: Euler from s down to its phase's lower edge."""

    def __init__(self, teacher: nn.Module, method: PhasedConsistency):
        super().__init__()
        self.teacher, self.method = teacher, method

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        times, out = self.method.times, []
        for xb, sb in zip(x, s, strict=True):
            n = int(torch.argmin((times - sb).abs()))
            if n == 0:
                out.append(self.teacher(xb[None], sb[None])[0])
                continue
            lower, _ = phase_bounds(torch.tensor([n]), self.method.edges, self.method.num_euler_timesteps)
            grid = times[int(lower) : n + 1].flip(0)
            end = sample_euler(self.teacher, xb[None], grid)[0]
            out.append((end - xb) / (times[int(lower)] - times[n]))
        return torch.stack(out)


def test_the_exact_phased_map_is_a_fixed_point_and_samples_the_teacher_euler_solution():
    """A student equal to the teacher's own phased map has zero loss, and M-NFE sampling with it
    lands on the teacher's N-step Euler endpoint: training and sampling use the same edges."""
    teacher = GMMTeacher(ring_mixture())
    method = PhasedConsistency(phases=3, num_euler_timesteps=12, target="online")
    oracle = PhasedOracle(teacher, method)
    x0, eps, n = teacher.sample_data(12).double(), torch.randn(12, 2, dtype=F64), torch.arange(1, 13)
    pred, target, *_ = method.consistency_pair(x0, eps, n, teacher, oracle)
    torch.testing.assert_close(pred, target)
    noise = torch.randn(5, 2, dtype=F64)
    assert method.sample_times(3).tolist() == [1.0, method.times[8].item(), method.times[4].item(), 0.0]
    torch.testing.assert_close(method.sample(oracle, noise, 3), sample_euler(teacher, noise, method.times.flip(0)))


def test_sampling_stops_nest_and_extra_nfe_renoises_inside_the_last_phase():
    method = PhasedConsistency(phases=2, num_euler_timesteps=50)
    torch.testing.assert_close(method.sample_times(2), torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    assert method.sample_times(1).tolist() == [1.0, 0.0]
    # The SD3 shift moves the grid and its edges: k = 1/3 puts the middle edge at s = 0.25.
    torch.testing.assert_close(
        PhasedConsistency(shift=1 / 3).sample_times(2), torch.tensor([1.0, 0.25, 0.0], dtype=F64)
    )
    assert set(method.sample_times(2).tolist()) <= set(method.sample_times(4).tolist())  # edges stay stops
    torch.testing.assert_close(method.last_phase_times(4), torch.tensor([0.5, 1 / 3, 1 / 6, 0.0], dtype=F64))
    assert method.supported_nfes([1, 2, 4, 64]) == [1, 2, 4, 64]
    assert PhasedConsistency(phases=1).last_phase_times(2).tolist() == [1.0, 0.5, 0.0]

    student, noise = mlp_student(), torch.randn(5, 2, dtype=F64)
    first, second = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    # Jump to the edge 0.5, then to data, re-noise with renoise(i) at 1/3 and 1/6, jump again.
    x = phased_consistency_fn(student, noise, torch.ones(5, dtype=F64), torch.full((5,), 0.5, dtype=F64))
    times = [0.5, 1 / 3, 1 / 6, 0.0]
    for i in range(3):
        s, s_next = times[i], times[i + 1]
        x0 = x - s * student(x, torch.full((5,), s, dtype=F64))
        x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * (first, second)[i]
    torch.testing.assert_close(method.sample(student, noise, 4, lambda i: (first, second)[i]), x)

    euler = PhasedConsistency(phases=2, num_euler_timesteps=50, extra_nfe="euler")
    assert euler.supported_nfes([1, 4, 64]) == [1, 4]
    torch.testing.assert_close(euler.sample(student, noise, 4), sample_euler(student, noise, euler.sample_times(4)))


def test_sampling_is_reproducible_per_sample():
    method = PhasedConsistency(phases=2)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    assert_sampling_reproducible_per_sample(method, student, nfe=4)


def test_renoising_within_the_phase_and_the_huber_distance():
    x, eps = torch.full((1, 2), 2.0, dtype=F64), torch.full((1, 2), -1.0, dtype=F64)
    s_edge, s_adv = torch.tensor([0.5], dtype=F64), torch.tensor([0.75], dtype=F64)
    # ((1 - 0.75) 2 + (0.75 - 0.5)(-1)) / 0.5 = 0.5; at the edge itself nothing changes.
    torch.testing.assert_close(renoise_within_phase(x, s_edge, s_adv, eps), torch.full((1, 2), 0.5, dtype=F64))
    torch.testing.assert_close(renoise_within_phase(x, s_edge, s_edge, eps), x)
    # From the data edge it is plain FM noising.
    zero = torch.zeros(1, dtype=F64)
    torch.testing.assert_close(renoise_within_phase(x, zero, s_adv, eps), 0.25 * x + 0.75 * eps)
    a, b = torch.tensor([[0.0, 3.0]], dtype=F64), torch.zeros(1, 2, dtype=F64)
    torch.testing.assert_close(elementwise_pseudo_huber(a, b, 1.0), torch.tensor([(10**0.5 - 1) / 2], dtype=F64))


def adversarial_method(**kwargs) -> PhasedConsistency:
    return PhasedConsistency(phases=2, num_euler_timesteps=10, adv_weight=0.1, disc_lr_ratio=4.0, **kwargs)


def test_adversarial_term_trains_two_optimizers_each_on_its_own_loss():
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    method = adversarial_method(r1_gamma=0.1)
    student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1)))
    method.attach(teacher, student)
    assert method.optimizer_names == ("student", "discriminator")
    disc_params = list(method.trainable_parameters("discriminator", student))
    assert disc_params and all(any(p is q for q in method.discriminator.parameters()) for p in disc_params)
    assert method.phases(0) == ("student", "discriminator") and method.phases(1) == ("student", "discriminator")
    assert method.lr_scale("discriminator", 0) == 4.0 and method.lr_scale("student", 0) == 1.0
    x0 = teacher.sample_data(16)

    terms = method.loss("student", x0, teacher, student, 0)
    assert {"consistency", "adversarial"} <= set(terms)
    torch.testing.assert_close(terms["loss"], terms["consistency"] + 0.1 * terms["adversarial"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)

    student.zero_grad(set_to_none=True)
    terms = method.loss("discriminator", x0, teacher, student, 0)
    assert terms["r1"] > 0 and 0 < terms["real_prob"] < 1
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc_params)
    assert all(p.grad is None for p in student.parameters())  # D's step never reaches the student


def test_alternating_rule_and_disabled_term():
    method = adversarial_method(alternate=True)
    assert [method.phases(k) for k in range(3)] == [("student",), ("discriminator",), ("student",)]
    plain = PhasedConsistency()
    assert plain.optimizer_names == ("student",) and plain.phases(0) == ("student",)
    plain.attach(GMMTeacher(ring_mixture()), mlp_student())
    assert plain.discriminator is None and plain.target_net is None  # online target, no adversarial term
    with pytest.raises(ValueError, match="adv_weight"):
        PhasedConsistency(adv_weight=-1.0)
    with pytest.raises(ValueError, match="target"):
        PhasedConsistency(target="swa")
    with pytest.raises(ValueError, match="shift"):
        PhasedConsistency(shift=0.0)
    with pytest.raises(ValueError, match="extra_nfe"):
        PhasedConsistency(extra_nfe="heun")


def test_target_and_discriminator_round_trip_through_method_state():
    teacher = GMMTeacher(ring_mixture())
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method = adversarial_method(target="ema")
    method.attach(teacher, student)
    method.loss("student", teacher.sample_data(8), teacher, student, 0)
    method.on_step_end(0, student)
    state = method.state_dict()
    assert any(k.startswith("target_net.") for k in state) and any(k.startswith("discriminator.") for k in state)
    fresh = PhasedConsistency(phases=2, num_euler_timesteps=10, adv_weight=0.1, target="ema")
    fresh.attach(teacher, student)  # attach alone gives every key a home: nothing of PCM's grows
    fresh.load_state_dict(state)  # strict
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_learned_phased_sampler_approaches_the_exact_teacher_flow():
    """M-NFE samples approach the exact teacher's ODE endpoints (analytic GMM teacher, MLP student)."""
    teacher, data = ring_teacher_and_data()
    student = VelocityModel(TimeMLP((2,), width=64, depth=2))
    method = PhasedConsistency(phases=2, num_euler_timesteps=20, target="ema", ema_target=0.9)
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise, grid="uniform")
    before = sample_error(method, student, noise, exact, nfe=2)
    train_method(method, teacher, student, data, steps=150, lr=3e-3, batch_size=128)
    after = sample_error(method, student, noise, exact, nfe=2)
    assert after < 0.25 * before, (before, after)


class UndefinedAtCleanData(nn.Module):
    """A student whose velocity is NaN at s = 0, as an x0-predicting network's is at sigma = 0."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, s):
        v = self.inner(x, s)
        return torch.where((s == 0)[:, None], torch.nan, v)


def test_first_grid_point_targets_never_ask_the_network_about_clean_data():
    # PCM's boundary (c_skip = 1): one step onto the lowest edge makes x_prev the target as it is.
    teacher = GMMTeacher(ring_mixture())
    method = PhasedConsistency(phases=2, num_euler_timesteps=10, target="online")
    student = UndefinedAtCleanData(mlp_student())
    x0, eps, n = teacher.sample_data(4).double(), torch.randn(4, 2, dtype=F64), torch.tensor([1, 1, 3, 6])
    pred, target, _, _ = method.consistency_pair(x0, eps, n, teacher, student)
    assert torch.isfinite(target).all()
    s1 = method.times[1]
    x_s = (1 - s1) * x0[:2] + s1 * eps[:2]
    torch.testing.assert_close(target[:2], x_s - s1 * teacher(x_s, s1.expand(2)))


def test_default_target_is_the_online_student_as_in_every_released_pcm_script():
    # G-U-N/Phased-Consistency-Model train_pcm_lora_sd15.py:1261-1281 (update_ema is never called).
    method = PhasedConsistency()
    assert method.target_kind == "online"
    student = VelocityModel(TimeMLP((2,), width=8, depth=1))
    assert method._target(student) is student and method.target_net is None


class SDLikeTeacher(nn.Module):
    """A velocity model on SD's discrete schedule (scaled_linear 0.00085..0.012, 1000 steps)."""

    def __init__(self):
        super().__init__()
        from distill.core.process import VPDiscrete

        self.process = VPDiscrete(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    def forward(self, x, s):
        return -x


def test_ddim_grid_is_the_teachers_ddim_timesteps_in_fm_time():
    # train_pcm_lora_sd15.py:289-303 (DDIMSolver): timesteps 19, 39, ..., 999 and the lowest point 0.
    teacher = SDLikeTeacher()
    method = PhasedConsistency(phases=4, num_euler_timesteps=50, grid="ddim")
    with pytest.raises(RuntimeError, match="ddim"):
        method.sample_times(4)
    method.attach(teacher, None)
    timesteps = torch.tensor([0.0] + [20.0 * k - 1 for k in range(1, 51)], dtype=torch.float64)
    torch.testing.assert_close(method.times, teacher.process.to_fm_time(timesteps))
    assert 0.93 < float(method.times[-1]) < 0.94  # s(999) on SD's schedule, not 1
    # Phase edges at the DDIM timesteps PCM jumps to (ddim_timesteps_prev of indices 0, 12, 25, 37).
    edges = teacher.process.from_fm_time(method.times[method.edges])
    torch.testing.assert_close(edges, torch.tensor([0.0, 239.0, 499.0, 739.0], dtype=torch.float64))
    stops = method.sample_times(4)
    assert float(stops[0]) == float(method.times[-1]) and float(stops[-1]) == 0.0  # ends at the data
    # Distances are measured on the teacher's native states: FM state times (alpha + sigma).
    t = teacher.process.from_fm_time(method.times[12:13])
    expected = teacher.process.alpha(t) + teacher.process.sigma(t)
    torch.testing.assert_close(
        method.native_scale(method.times[12:13], torch.zeros(1, 2, dtype=torch.float64)).flatten(), expected
    )


def test_ddim_grid_refuses_a_teacher_without_discrete_timesteps():
    with pytest.raises(ValueError, match="grid=ddim"):
        PhasedConsistency(grid="ddim").attach(GMMTeacher(ring_mixture()), None)
