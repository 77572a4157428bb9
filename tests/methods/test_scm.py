"""sCM: the tangent, the loss and its gradients, dropout sharing, DDP sync, sampling, and learning."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import distill.methods.scm as scm_module
from distill.core.gmm import ring_mixture
from distill.core.trigflow import trig_consistency_fn
from distill.methods.scm import SCM, normalize_tangent, scm_tangent
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    evaluation_noise,
    exact_endpoints,
    regress_velocity,
    ring_teacher_and_data,
    sample_error,
    train_method,
)


def tiny_pair(dim: int = 2, seed: int = 0) -> tuple[Teacher, nn.Module]:
    torch.manual_seed(seed)
    teacher = Teacher(VelocityModel(TimeMLP((dim,), width=32, depth=1)), (dim,))
    student = student_from_teacher(teacher.model)
    with torch.no_grad():  # move the student off the teacher, so every term is non-zero
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student


class DropoutVelocity(nn.Module):
    """A velocity model with dropout: two forwards differ unless they share the RNG state."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.inp, self.drop, self.out = nn.Linear(dim + 1, 64), nn.Dropout(0.5), nn.Linear(64, dim)

    def forward(self, x, s):
        return self.out(self.drop(torch.tanh(self.inp(torch.cat([x, s[:, None]], dim=1)))))


def test_tangent_at_full_warmup_is_cos_t_times_the_total_derivative_of_f():
    """g(r = 1) = cos t d/dt f(x_t(t), t) along dx_t/dt, with dF/dt from the JVP (docs/methods.md 4.2)."""
    torch.manual_seed(0)
    model, sd = DropoutVelocity().double().eval(), 0.5  # float64 throughout (TimeMLP embeds t in float32)
    x_t, dxdt = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.2, 0.7, 1.1, 1.5], dtype=torch.float64)
    method = SCM(sigma_data=sd, tangent_warmup=0)
    _, F_sg, cs_dFdt = method.student_F_and_tangent(model, x_t, t, dxdt, r=1.0)
    g = scm_tangent(F_sg, cs_dFdt, x_t, dxdt, t, sd, r=1.0)
    h = 1e-5
    df_dt = (
        trig_consistency_fn(model, x_t + h * dxdt, t + h, sd) - trig_consistency_fn(model, x_t - h * dxdt, t - h, sd)
    ) / (2 * h)
    torch.testing.assert_close(g, torch.cos(t)[:, None] * df_dt, atol=1e-6, rtol=1e-5)


def test_tangent_normalisation_bounds_the_norm():
    g = (
        torch.randn(5, 3, 4, dtype=torch.float64)
        * torch.tensor([1e-3, 1, 10, 1e3, 1e6], dtype=torch.float64)[:, None, None]
    )
    norms = normalize_tangent(g, 0.1).flatten(1).norm(dim=1)
    assert (norms < 1).all() and norms[-1] > 0.999
    torch.testing.assert_close(norms, g.flatten(1).norm(dim=1) / (g.flatten(1).norm(dim=1) + 0.1))


def test_loss_is_finite_and_reaches_student_and_weighting_net():
    teacher, student = tiny_pair()
    method = SCM(tangent_warmup=10)
    params = list(method.trainable_parameters("student", student))
    assert len(params) == len(list(student.parameters())) + len(list(method.weighting.parameters()))
    x0 = ring_mixture().sample(64, torch.Generator().manual_seed(0)).float()
    terms = method.loss("student", x0, teacher, student, step=20)
    assert torch.isfinite(terms["loss"]) and float(terms["tangent_ratio"]) == 1.0
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.ndim > 1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.weighting.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_non_finite_rows_are_masked_out_of_loss_and_gradient(monkeypatch):
    teacher, student = tiny_pair()
    method = SCM(tangent="teacher", tangent_warmup=0)
    real_dxdt = method.dxdt

    def poisoned(*args):
        d = real_dxdt(*args).clone()
        d[0] = float("nan")
        return d

    monkeypatch.setattr(method, "dxdt", poisoned)
    terms = method.loss("student", torch.randn(16, 2), teacher, student, step=0)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and float(terms["finite_fraction"]) == 15 / 16
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_tangent_warmup_ratio_and_step_zero_ignores_the_jvp(monkeypatch):
    method = SCM(tangent_warmup=0.1)
    method.set_budget(1000)
    assert [method.tangent_ratio(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert SCM(tangent_warmup=40).tangent_ratio(10) == 0.25 and SCM(tangent_warmup=0).tangent_ratio(0) == 1.0

    teacher, student = tiny_pair()
    x0 = torch.randn(32, 2)

    def loss_at(step: int) -> float:
        torch.manual_seed(1)
        return float(method.loss("student", x0, teacher, student, step)["loss"])

    clean = (loss_at(0), loss_at(100))

    def garbage_jvp(fn, primals, tangents, mode, fd_step):
        out = fn(*primals)
        return out, 1e3 * torch.ones_like(out)

    monkeypatch.setattr(scm_module, "jvp", garbage_jvp)
    assert loss_at(0) == clean[0]  # r = 0: dF/dt does not enter the tangent
    assert loss_at(100) != clean[1]


def test_a_student_equal_to_the_teacher_is_a_fixed_point_before_warmup():
    """At r = 0 the sCD tangent is -cos^2 t (sigma_d F - sigma_d F_teacher): zero for the teacher itself."""
    teacher, _ = tiny_pair()
    student = student_from_teacher(teacher.model)
    terms = SCM(tangent="teacher", tangent_warmup=100).loss("student", torch.randn(32, 2), teacher, student, step=0)
    assert float(terms["mse"]) < 1e-12


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_jvp_forward_and_gradient_forward_share_dropout_masks(mode):
    torch.manual_seed(0)
    student = DropoutVelocity().train()
    method = SCM(jvp=mode)
    x_t, dxdt, t = torch.randn(8, 3), torch.randn(8, 3), torch.rand(8, dtype=torch.float64) + 0.2
    F_theta, F_sg, _ = method.student_F_and_tangent(student, x_t, t, dxdt, r=1.0)
    torch.testing.assert_close(F_theta.detach(), F_sg, rtol=0, atol=0)
    assert not torch.equal(student(x_t, t.float()), student(x_t, t.float()))  # dropout is really on


class KernelDependent(nn.Module):
    """A velocity net whose output shifts when no gradient is recorded: a stand-in for a JVP forward
    that runs other kernels (math attention, another precision) than the gradient forward."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim + 1, dim)

    def forward(self, x, s):
        out = self.lin(torch.cat([x, s[:, None].to(x.dtype)], dim=1))
        return out if torch.is_grad_enabled() else out + 10.0


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_f_minus_is_the_gradient_forward_detached(mode):
    """F^- = F_theta.detach() (rCM t2v_model_distill_rcm.py:545-546, FastGen sCM.py:254): the target
    is exactly F_theta + g, so the mse is ||g||^2 / D whatever a second forward would have returned."""
    teacher, _ = tiny_pair()
    torch.manual_seed(0)
    student = KernelDependent()
    method = SCM(tangent="teacher", tangent_warmup=0, jvp=mode)
    x_t, dxdt, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8, dtype=torch.float64) + 0.2
    F_theta, F_sg, cs_dFdt = method.student_F_and_tangent(student, x_t, t, dxdt, r=1.0)
    torch.testing.assert_close(F_theta.detach(), F_sg, rtol=0, atol=0)
    terms = method.loss("student", torch.randn(16, 2), teacher, student, step=0)
    assert float(terms["mse"]) < 1 / 2  # ||g / (||g|| + c)||^2 / D < 1 / D; a second forward's +10 gives ~100


def test_without_adaptive_weighting_the_loss_is_the_plain_mse_and_w_is_not_trained():
    """rCM has no adaptive weight (t2v_model_distill_rcm.py:573-574): its sCM term is the plain squared error."""
    teacher, student = tiny_pair()
    method = SCM(tangent="teacher", tangent_warmup=0, adaptive_weighting=False)
    with torch.no_grad():
        for p in method.weighting.parameters():
            p.normal_()  # would change the loss if it were applied
    terms = method.loss("student", torch.randn(16, 2), teacher, student, step=0)
    torch.testing.assert_close(terms["loss"], terms["mse"])
    trained = {id(p) for p in method.trainable_parameters("student", student)}
    assert trained == {id(p) for p in student.parameters()}
    assert not any(p.requires_grad for p in method.weighting.parameters())


def test_prior_weighting_divides_each_samples_mse_by_sigma_d_tan_t():
    teacher, student = tiny_pair()
    x0 = torch.randn(16, 2)
    losses = {}
    for prior in (False, True):
        method = SCM(tangent="teacher", tangent_warmup=0, adaptive_weighting=False, prior_weighting=prior)
        torch.manual_seed(0)
        losses[prior] = float(method.loss("student", x0, teacher, student, step=0)["loss"])
    assert losses[True] != pytest.approx(losses[False])  # the exact weight is checked in tests/parity/test_scm.py


def test_t_mid_none_samples_with_the_first_nfe_minus_1_multistep_times():
    """rCM's sampler: ``mid_t = backward_timesteps[: num_steps - 1]`` at every NFE
    (t2v_model_distill_rcm.py:768-769)."""
    method = SCM(t_mid=None, multistep_times=[1.5, 1.4, 1.0])
    assert method.trig_sample_times(2)[1:-1].tolist() == [1.5]
    assert method.trig_sample_times(3)[1:-1].tolist() == [1.5, 1.4]
    assert SCM(t_mid=1.1, multistep_times=[1.5, 1.4, 1.0]).trig_sample_times(2)[1:-1].tolist() == [1.1]
    with pytest.raises(ValueError, match="t_mid"):
        SCM(t_mid=None, multistep_times=[])


def test_sampling_times_and_reproducibility_per_sample():
    method = SCM(sigma_data=0.5)
    times = method.trig_sample_times(2)
    torch.testing.assert_close(times, torch.tensor([math.atan(160.0), 1.1, 0.0], dtype=torch.float64))
    assert method.trig_sample_times(4)[1:-1].tolist() == [1.3, 1.0, 0.6]
    assert method.supported_nfes([1, 2, 4, 8]) == [1, 2, 4]
    _, student = tiny_pair()
    assert_sampling_reproducible_per_sample(method, student, nfe=4)
    # One step is the consistency function at t_max from x = sigma_d sin(t_max) z.
    z = torch.randn(5, 2)
    t_max = torch.full((5,), math.atan(160.0), dtype=torch.float64)
    x = (0.5 * math.sin(math.atan(160.0)) * z).double()
    expected = trig_consistency_fn(student.double(), x, t_max, 0.5).float()
    torch.testing.assert_close(method.sample(student.float(), z, 1), expected, atol=1e-5, rtol=1e-5)


class SlowTime(nn.Module):
    """Feeds the net c_noise = s instead of 1000 s: the smooth time input sCM needs (docs/methods.md 4.3).

    With the 1000 s embedding, dF/dt of a small MLP is dominated by its highest time frequencies
    and sCD from it does not settle within a test's budget.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, c_noise):
        return self.net(x, c_noise / 1000)


def test_scd_flow_map_error_against_the_exact_flow_shrinks():
    """One-step sCD samples approach the exact teacher's ODE endpoints (analytic GMM teacher)."""
    teacher, data = ring_teacher_and_data()
    student = VelocityModel(SlowTime(TimeMLP((2,), width=128, depth=3)))
    regress_velocity(student, student.parameters(), teacher, data, steps=200)  # sCD starts from a diffusion model
    method = SCM(tangent="teacher", tangent_warmup=30)
    noise = evaluation_noise()
    exact = exact_endpoints(teacher, noise, start=float(method.sample_times(1)[0]))
    before = sample_error(method, student, noise, exact, nfe=1)  # the one-step Euler map: the posterior mean
    train_method(method, teacher, student, data, steps=60, lr=1e-3)
    after = sample_error(method, student, noise, exact, nfe=1)
    assert after < 0.1 * before, (before, after)


# --- two-process DDP ---------------------------------------------------------------------


class SCMLossModule(nn.Module):
    """What Lightning's DDP wraps: a module whose forward is the method's loss."""

    def __init__(self, teacher: Teacher, student: nn.Module, method: SCM):
        super().__init__()
        self.teacher, self.student, self.method = teacher, student, method

    def forward(self, x0):
        return self.method.loss("student", x0, self.teacher, self.student, step=5)["loss"]


def _flat_grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.requires_grad])


def _ddp_worker(rank: int, world: int, port: int, jvp_mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        teacher, student = tiny_pair(seed=0)  # same weights on both ranks (DDP also broadcasts rank 0's)
        module = SCMLossModule(teacher, student, SCM(tangent_warmup=1, jvp=jvp_mode))
        x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(100 + rank))  # each rank its own data
        torch.manual_seed(rank)
        module(x0).backward()
        local = _flat_grads(module)
        module.zero_grad()
        ddp = nn.parallel.DistributedDataParallel(module)
        torch.manual_seed(rank)
        ddp(x0).backward()
        synced = _flat_grads(module)
        gathered_local = [torch.empty_like(local) for _ in range(world)]
        gathered_synced = [torch.empty_like(synced) for _ in range(world)]
        dist.all_gather(gathered_local, local)
        dist.all_gather(gathered_synced, synced)
        assert not torch.allclose(gathered_local[0], gathered_local[1])  # different data, different grads
        torch.testing.assert_close(gathered_synced[0], gathered_synced[1], rtol=0, atol=0)
        torch.testing.assert_close(synced, sum(gathered_local) / world, rtol=1e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # 9 s; tests/lit/test_ddp.py checks sCM under DDP in make test
def test_gradients_are_synchronised_across_two_ddp_processes():
    mp.spawn(_ddp_worker, args=(2, _free_port(), "exact"), nprocs=2, join=True)
