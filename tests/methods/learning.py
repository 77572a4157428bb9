"""Shared pieces of the methods' tests: per-sample reproducible sampling, and learning tests that
train on the analytic ring mixture, then compare few-step samples with the exact teacher's ODE
endpoints from the same noise."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from distill.core.gmm import ring_mixture
from distill.core.grids import make_grid
from distill.core.samplers import sample_heun
from distill.evaluation.runner import EvalSpec, generate
from distill.methods.base import Method
from distill.metrics import mode_coverage_gmm
from distill.metrics.sliced_wasserstein import sliced_wasserstein
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel
from distill.teachers import GMMTeacher, Teacher


def assert_sampling_reproducible_per_sample(method: Method, student: nn.Module, nfe: int) -> None:
    """``nfe``-step samples of 2-D noise (re-noising included) do not depend on the batching."""
    spec = EvalSpec(num_samples=6, batch_size=6, progress=False)
    first = generate(lambda z, renoise: method.sample(student, z, nfe, renoise), (2,), spec)
    spec.batch_size = 4  # another batching, same per-sample seeds
    second = generate(lambda z, renoise: method.sample(student, z, nfe, renoise), (2,), spec)
    torch.testing.assert_close(first, second)


def ring_teacher_and_data(n: int = 8192) -> tuple[GMMTeacher, Tensor]:
    """The exact ring-mixture teacher and ``n`` of its samples (seeded)."""
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    return teacher, teacher.sample_data(n)


def evaluation_noise(n: int = 1000) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1))


def exact_endpoints(teacher: GMMTeacher, noise: Tensor, start: float = 1.0, grid: str = "karras") -> Tensor:
    """Where the teacher's ODE takes ``prior_state(noise, start)`` (64 Heun steps, float64)."""
    times = make_grid(grid, 64)
    if start < 1.0:
        times = times[1:].clamp(max=start)
    return sample_heun(teacher, start * noise.double(), times.double())


def sample_error(method: Method, student: nn.Module, noise: Tensor, exact: Tensor, nfe: int) -> float:
    """Mean squared distance of the student's ``nfe``-step samples to the exact endpoints."""
    return (method.sample(student, noise, nfe).double() - exact).pow(2).sum(1).mean().item()


def regress_velocity(
    velocity: Callable[[Tensor, Tensor], Tensor],
    params: Iterable[nn.Parameter],
    teacher: GMMTeacher,
    data: Tensor,
    steps: int,
) -> None:
    """A rough diffusion model, the starting point of tuning methods: regress the exact velocity."""
    opt = torch.optim.Adam(params, lr=2e-3)
    for _ in range(steps):
        x0, s = data[torch.randint(0, len(data), (256,))], torch.rand(256)
        x_s = (1 - s[:, None]) * x0 + s[:, None] * torch.randn_like(x0)
        loss = (velocity(x_s, s) - teacher(x_s, s)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def train_method(
    method: Method,
    teacher: GMMTeacher | None,
    student: nn.Module,
    data: Tensor,
    steps: int,
    lr: float,
    batch_size: int = 256,
) -> None:
    """Plain single-optimizer training: the method's networks attached, its loss, Adam, and its per-step hook."""
    method.attach(teacher, student)
    opt = torch.optim.Adam(list(method.trainable_parameters("student", student)), lr=lr)
    for step in range(steps):
        loss = method.loss("student", data[torch.randint(0, len(data), (batch_size,))], teacher, student, step)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        method.on_step_end(step, student)


def train_phases(
    method: Method,
    teacher: nn.Module,
    student: nn.Module,
    data: Tensor,
    steps: int,
    lr: float,
    batch_size: int = 256,
    betas: tuple[float, float] = (0.0, 0.99),
) -> None:
    """Multi-optimizer training as ``DistillModule`` runs it: one Adam per optimizer name, the
    phases ``method.phases(step)`` in order, each with its learning-rate scale and gradient bound."""
    method.attach(teacher, student)
    opts = {
        name: torch.optim.Adam(list(method.trainable_parameters(name, student)), lr=lr, betas=betas)
        for name in method.optimizer_names
    }
    for step in range(steps):
        x0 = data[torch.randint(0, len(data), (batch_size,))]
        for phase in method.phases(step):
            for group in opts[phase].param_groups:
                group["lr"] = lr * method.lr_scale(phase, step)
            loss = method.loss(phase, x0, teacher, student, step)["loss"]
            opts[phase].zero_grad(set_to_none=True)
            loss.backward()
            if (bound := method.grad_value_clip(phase)) > 0:
                torch.nn.utils.clip_grad_value_(list(method.trainable_parameters(phase, student)), bound)
            opts[phase].step()
        method.on_step_end(step, student)


def one_step_ring_quality_before_after(method: Method, steps: int = 300, lr: float = 1e-3):
    """Train a one-step generator method from a rough diffusion model on the ring mixture.

    Returns (sliced Wasserstein to data, share of modes covered, share of samples near a mode) of
    1-NFE samples from fixed noise, before and after training.
    """
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((2,), width=64, depth=2))
    regress_velocity(student, student.parameters(), teacher, data, 300)
    noise = evaluation_noise(2000)

    def quality() -> tuple[float, float, float]:
        x = method.sample(student, noise, 1)
        coverage, near_mode = mode_coverage_gmm(x, ring_mixture())
        return sliced_wasserstein(x, data[:2000]), coverage.covered, near_mode

    before = quality()
    train_phases(method, teacher, student, data, steps, lr)
    return before, quality()


def tiny_unet_teacher() -> Teacher:
    """A seeded, untrained 8x8 one-channel UNet teacher: enough to check which networks learn what."""
    torch.manual_seed(0)
    return Teacher(VelocityModel(UNet(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4)), (1, 8, 8))


def has_gradients(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` received a non-zero gradient."""
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
