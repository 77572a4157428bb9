"""MeanFlow: the student conversion, the JVP target, its flow-matching limit, and a map that learns."""

import pytest
import torch
from torch import nn

from distill.core.gmm import ring_mixture
from distill.lit.distill import DistillModule
from distill.methods.meanflow import (
    MeanFlow,
    adaptive_weight,
    inward_difference,
    meanflow_target,
    sample_time_pair,
)
from distill.nets.factory import build_net
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.average_velocity import AverageVelocityModel, average_velocity_from, flow_map
from distill.students.flow_map import student_from_teacher
from distill.teachers import GMMTeacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    evaluation_noise,
    exact_endpoints,
    regress_velocity,
    ring_teacher_and_data,
    sample_error,
    train_method,
)

TINY_UNET = {"type": "unet", "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}


class SmoothNet(nn.Module):
    """A float64 MLP with smooth time inputs, so a finite difference can be trusted to ~1e-8."""

    extra_time = True

    def __init__(self, dim: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + 2, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x, c_noise, c_extra):
        return self.body(torch.cat([x, c_noise[:, None] / 1000, c_extra[:, None] / 1000], dim=1))


def fd_target(model, z, r, t, v, h=1e-4):
    """``v - (t - r) du/dt`` with du/dt by a float64 central difference along (v, 0, 1)."""
    with torch.no_grad():
        dudt = (model(z + h * v, r, t + h) - model(z - h * v, r, t - h)) / (2 * h)
    return v - (t - r)[:, None] * dudt


def test_student_from_a_teacher_copy_starts_as_the_teacher():
    torch.manual_seed(0)
    teacher = VelocityModel(build_net(TINY_UNET, (1, 8, 8)))
    student = MeanFlow().prepare_student(student_from_teacher(teacher))
    assert isinstance(student, AverageVelocityModel)
    z, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    with torch.no_grad():
        torch.testing.assert_close(student(z, t, t), teacher(z, t), rtol=0, atol=0)
        torch.testing.assert_close(student(z, 0.3 * t, t), teacher(z, t), rtol=0, atol=0)  # zero-init r input
    assert all(p.requires_grad for p in student.parameters())
    assert MeanFlow().prepare_student(student) is student  # idempotent: checkpoint reloads rebuild this way


def test_random_init_mlp_student_is_converted_or_kept():
    plain = average_velocity_from(VelocityModel(TimeMLP((2,), width=16, depth=1)))
    assert plain.net.extra_time
    net = TimeMLP((2,), width=16, depth=1, extra_time=True)
    assert average_velocity_from(VelocityModel(net)).net is net


def test_foreign_students_and_weights_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="not a Linear"):
        average_velocity_from(nn.Linear(2, 2))
    wrapped = VelocityModel(TimeMLP((2,), width=8, depth=1))
    wrapped.net.register_buffer("stray", torch.zeros(1))  # a key the rebuilt net will not have
    with pytest.raises(ValueError, match="unexpected"):
        average_velocity_from(wrapped)


def test_edm_scheme_student_starts_as_the_teacher_and_trains():
    """FastGen and py-meanflow run MeanFlow on EDM networks: an edm-scheme teacher copy becomes u(z, r, t)
    with its EDM preconditioning at t and t - r as the new (zero-initialised) input."""
    from distill.teachers.pretraining import denoising_loss

    torch.manual_seed(0)
    data = torch.tanh(torch.randn(64, 1, 8, 8))  # a digits-like stand-in in [-1, 1]
    teacher = VelocityModel(build_net(TINY_UNET, (1, 8, 8)), scheme="edm")
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(5):  # a briefly trained EDM-scheme teacher (tests/conftest.py train_tiny_teacher's loss)
        opt.zero_grad()
        denoising_loss(teacher, data[torch.randint(0, 64, (16,))]).mean().backward()
        opt.step()
    teacher.eval().requires_grad_(False)
    method = MeanFlow(velocity="teacher", jvp="exact", equal_ratio=0.25)
    student = method.prepare_student(student_from_teacher(teacher))
    assert isinstance(student, AverageVelocityModel) and student.scheme == "edm"
    z = torch.randn(5, 1, 8, 8)
    t = torch.tensor([1e-4, 0.05, 0.5, 0.95, 1.0])  # clamped to sigma_min and sigma_max at the ends
    with torch.no_grad():
        torch.testing.assert_close(student(z, t, t), teacher(z, t), rtol=0, atol=0)
        torch.testing.assert_close(student(z, 0.3 * t, t), teacher(z, t), rtol=0, atol=0)  # zero-init r input
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in student.parameters()]
    for step in range(3):
        loss = method.loss("student", data[16 * step : 16 * step + 16], teacher, student, step)["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


class RecordingNet(nn.Module):
    """Records the time inputs it is given."""

    extra_time = True

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, c_noise, c_extra):
        self.seen.append((c_noise, c_extra))
        return x


def test_time_scale_feeds_raw_or_scaled_times():
    """py-meanflow feeds raw (t, t - r) to its UNet (unet.py:360-374); diffusers-style teachers 1000 t."""
    z, r, t = torch.randn(3, 2), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6, 0.3])
    for scale in (1.0, 1000.0):
        net = RecordingNet()
        student = MeanFlow(time_scale=scale).prepare_student(VelocityModel(net))
        student(z, r, t)
        torch.testing.assert_close(net.seen[0][0], scale * t)
        torch.testing.assert_close(net.seen[0][1], scale * (t - r))
    with pytest.raises(ValueError, match="time_scale"):
        MeanFlow(time_scale=0.0)


def test_checkpoint_reload_into_a_module_built_the_same_way():
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())

    def build() -> DistillModule:
        method = MeanFlow()
        student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1)))
        return DistillModule(teacher, student, method, lambda p: torch.optim.Adam(p), ema_decays=[0.9])

    first, second = build(), build()
    with torch.no_grad():
        for p in first.student.parameters():
            p.add_(torch.randn_like(p))
    second.load_state_dict(first.state_dict())
    z, r, t = torch.randn(3, 2), torch.full((3,), 0.2), torch.full((3,), 0.9)
    torch.testing.assert_close(second.student(z, r, t), first.student(z, r, t))


def test_jvp_target_matches_a_float64_finite_difference():
    torch.manual_seed(0)
    model = AverageVelocityModel(SmoothNet())
    z, v = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    r = t * torch.rand(6, dtype=torch.float64)
    u, u_tgt = meanflow_target(model, z, r, t, v, "exact")
    torch.testing.assert_close(u_tgt, fd_target(model, z, r, t, v), rtol=1e-7, atol=1e-7)
    assert u.requires_grad and not u_tgt.requires_grad  # gradient through the primal output only
    u.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_jvp_target_through_a_real_mlp_with_sinusoidal_time_features():
    """TimeMLP rounds 1000 t to float32 in its sinusoids: a difference agrees to ~1e-3 only."""
    torch.manual_seed(0)
    model = average_velocity_from(VelocityModel(TimeMLP((2,), width=32, depth=2))).double()
    with torch.no_grad():
        for p in model.net.extra_embed[-1].parameters():
            p.normal_(0, 0.1)  # make r matter
    z, v = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(5, dtype=torch.float64)
    r = t * torch.rand(5, dtype=torch.float64)
    exact = meanflow_target(model, z, r, t, v, "exact")[1]
    torch.testing.assert_close(exact, fd_target(model, z, r, t, v, h=1e-4), rtol=1e-2, atol=1e-2)
    fd = meanflow_target(model, z, r, t, v, "finite_difference", fd_step=1e-4)[1]
    torch.testing.assert_close(fd, exact, rtol=1e-2, atol=1e-2)


def test_inward_difference_stays_in_r_le_t_le_1_and_matches_the_derivative():
    torch.manual_seed(0)
    model = AverageVelocityModel(SmoothNet())
    z, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([1.0, 0.999, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.0, 0.2, 0.4995, 0.3], dtype=torch.float64)  # edges: t = 1, t near 1, near r, r = t
    times = []

    def recording(z_, r_, t_):
        times.append((r_, t_))
        return model(z_, r_, t_)

    approx = inward_difference(recording, z, r, t, v, step=1e-3)
    assert all((t_ >= r_).all() and (t_ <= 1).all() for r_, t_ in times)
    _, exact = torch.func.jvp(model, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    torch.testing.assert_close(approx, exact, rtol=1e-3, atol=1e-3)  # one-sided at the edges: O(h)


def test_time_pairs_are_ordered_with_the_requested_share_of_r_equal_t():
    torch.manual_seed(0)
    r, t = sample_time_pair(1000, -0.4, 1.0, 0.75)
    assert (t >= r).all() and (r > 0).all() and (t < 1).all()
    assert abs(int((r == t).sum()) - 750) < 60  # a Bernoulli draw per sample (sd 14)
    apart = r != t
    assert (torch.logit(t[apart]) - torch.logit(r[apart])).mean() > 0.8  # a max and a min: 2/sqrt(pi) apart
    r, t = sample_time_pair(1000, 0.0, 1.0, 0.0, dist="uniform")
    assert (r != t).all() and abs(t.mean().item() - 2 / 3) < 0.03 and abs(r.mean().item() - 1 / 3) < 0.03


def test_r_equal_t_reduces_the_loss_to_flow_matching():
    torch.manual_seed(0)
    model = AverageVelocityModel(SmoothNet())
    z, v, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64), torch.rand(4).double()
    u, u_tgt = meanflow_target(model, z, t, t, v)
    torch.testing.assert_close(u_tgt, v, rtol=0, atol=0)
    torch.testing.assert_close(u, model.velocity(z, t), rtol=0, atol=0)

    method = MeanFlow(equal_ratio=1.0, velocity="data", adaptive_power=0.0)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    torch.manual_seed(1)
    loss = method.loss("student", x0, None, model, 0)["loss"]
    torch.manual_seed(1)
    _, s = sample_time_pair(8, -0.4, 1.0, 1.0, dtype=torch.float64)  # the loss draws times first, then noise
    eps = torch.randn_like(x0)
    x_s = (1 - s[:, None]) * x0 + s[:, None] * eps
    fm = (model.velocity(x_s, s) - (eps - x0)).pow(2).sum(1).mean()
    torch.testing.assert_close(loss, fm)


def test_adaptive_weight_is_one_over_err_plus_c_without_gradient():
    err = torch.tensor([0.0, 1.0, 9.0], requires_grad=True)
    w = adaptive_weight(err, power=1.0, eps=1e-3)
    torch.testing.assert_close(w, 1 / (err.detach() + 1e-3))
    assert not w.requires_grad
    torch.testing.assert_close(adaptive_weight(err, power=0.5, eps=0.0)[1:], torch.tensor([1.0, 1 / 3]))


def test_one_step_sample_is_eps_minus_u_and_multistep_is_reproducible_per_sample():
    torch.manual_seed(0)
    method = MeanFlow()
    student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1, extra_time=True)))
    with torch.no_grad():
        for p in student.net.extra_embed[-1].parameters():
            p.normal_()
    eps = torch.randn(5, 2)
    ones, zeros = torch.ones(5), torch.zeros(5)
    torch.testing.assert_close(method.sample(student, eps, 1), eps - student(eps, zeros, ones))
    torch.testing.assert_close(method.sample(student, eps, 1), flow_map(student, eps, ones, zeros))
    assert_sampling_reproducible_per_sample(method, student, nfe=3)


def test_sampling_shift_moves_the_jump_times_towards_data_and_keeps_the_ends():
    times = MeanFlow(sampling_shift=0.7).sample_times(2)
    torch.testing.assert_close(
        times, torch.tensor([1.0, 0.35 / 0.85, 0.0], dtype=times.dtype)
    )  # k s / (1 + (k - 1) s) at s = 0.5
    torch.testing.assert_close(MeanFlow().sample_times(4), torch.linspace(1, 0, 5, dtype=times.dtype))
    with pytest.raises(ValueError, match="sampling_shift"):
        MeanFlow(sampling_shift=0.0)


def test_learned_flow_map_error_against_the_exact_flow_shrinks():
    """One-step samples approach the exact teacher's ODE endpoints (analytic GMM teacher), with the
    benchmark's settings: a wide finite-difference derivative and a quarter of the batch at r = t."""
    teacher, data = ring_teacher_and_data()
    student = average_velocity_from(VelocityModel(TimeMLP((2,), width=128, depth=3)))
    regress_velocity(student.velocity, student.parameters(), teacher, data, steps=300)  # a diffusion model first
    method = MeanFlow(jvp="finite_difference", fd_step=3e-2, equal_ratio=0.25)
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise)
    before = sample_error(method, student, noise, exact, nfe=1)  # the one-step Euler map: the posterior mean
    train_method(method, teacher, student, data, steps=400, lr=1e-3)
    after = sample_error(method, student, noise, exact, nfe=1)
    assert after < 0.25 * before, (before, after)
