"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025; docs/methods.md 10.3), in flow-matching coordinates.

The student learns the average velocity ``u(z_t, r, t)`` over ``[r, t]`` from the MeanFlow identity
``u = v - (t - r) du/dt``, where ``du/dt = v . d_z u + d_t u`` is one JVP of the student along
the tangent ``(v, 0, 1)``. The target is a constant (stop-gradient); the gradient reaches the
student through the JVP's primal output. A jump ``t -> r`` is then one call:
``z_r = z_t - (t - r) u(z_t, r, t)``.

``v`` is the conditional velocity ``eps - x0`` (the paper: teacher-free) or the teacher's
velocity at ``z_t`` (distillation: the same fixed point, with far less variance in the target).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.grids import GRIDS, make_grid
from distill.core.jvp import JVP_MODES, jvp
from distill.core.prediction import fm_noise
from distill.core.samplers import sample_flow_map
from distill.core.tensors import append_dims
from distill.core.time_sampling import sample_logit_normal, sample_uniform, shift_time
from distill.methods.base import Method, Renoise, check_choice
from distill.students.average_velocity import (
    AverageVelocityFlowMap,
    AverageVelocityModel,
    average_velocity_from,
)

VELOCITIES = ("data", "teacher")
TIME_DISTS = ("logit_normal", "uniform")


def sample_time_pair(
    n: int,
    p_mean: float,
    p_std: float,
    equal_ratio: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    dist: str = "logit_normal",
) -> tuple[Tensor, Tensor]:
    """``(r, t)``, each (n,): two times (logit-normal, or uniform) sorted so t >= r; each sample gets
    r = t with probability ``equal_ratio`` (there the MeanFlow loss is plain flow matching).

    py-meanflow's v0 sampler (``meanflow/models/time_sampler.py:22-39``), whose ``--ratio`` is the
    probability of r != t, i.e. ``1 - equal_ratio``: t, then r, drawn independently, sorted, and a
    per-sample Bernoulli draw for r = t.
    """
    if dist == "uniform":
        pair = sample_uniform(2 * n, dtype=dtype, device=device).view(2, n)
    else:
        pair = sample_logit_normal(2 * n, p_mean, p_std, dtype=dtype, device=device).view(2, n)
    t, r = torch.maximum(pair[0], pair[1]), torch.minimum(pair[0], pair[1])
    equal = torch.rand(n, device=device, dtype=dtype) < equal_ratio
    return torch.where(equal, t, r), t


def inward_difference(model: AverageVelocityModel, z: Tensor, r: Tensor, t: Tensor, v: Tensor, step: float) -> Tensor:
    """``du/dt`` along ``(v, 0, 1)`` by a difference over ``[t - h-, t + h+]``, kept inside the
    trained region ``r <= t <= 1`` (central where it fits, one-sided at the edges).

    A step of ~1e-2 also low-passes the net's time response: fed ``1000 t``, sinusoidal features
    turn once per 1e-3 of t, and their wiggles swamp the exact derivative of real teachers.
    """
    h_plus, h_minus = (1 - t).clamp(0, step), (t - r).clamp(0, step)
    with torch.no_grad():
        plus = model(z + append_dims(h_plus, z.ndim) * v, r, t + h_plus)
        minus = model(z - append_dims(h_minus, z.ndim) * v, r, t - h_minus)
    return (plus - minus) / append_dims((h_plus + h_minus).clamp_min(1e-12), z.ndim)


def meanflow_target(
    model: AverageVelocityModel,
    z: Tensor,
    r: Tensor,
    t: Tensor,
    v: Tensor,
    jvp_mode: str = "exact",
    fd_step: float = 1e-2,
) -> tuple[Tensor, Tensor]:
    """``(u, u_tgt)``: the student's ``u(z, r, t)`` (with its graph) and the detached target
    ``v - (t - r) (v . d_z u + d_t u)``, the derivative by one JVP along ``(v, 0, 1)`` (``exact``)
    or by ``inward_difference`` (``finite_difference``). z, v: (B, ...); r, t: (B,)."""
    if jvp_mode == "finite_difference":
        u, dudt = model(z, r, t), inward_difference(model, z, r, t, v, fd_step)
    else:
        u, dudt = jvp(model, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)), mode=jvp_mode)
    u_tgt = v - append_dims(t - r, z.ndim) * dudt
    return u, u_tgt.detach()


def adaptive_weight(err: Tensor, power: float = 1.0, eps: float = 1e-3) -> Tensor:
    """MeanFlow's ``w = 1 / (err + c)^p`` (no gradient): p = 1 makes each sample's loss ~ log(err)."""
    return 1.0 / (err.detach() + eps) ** power


class MeanFlow(Method):
    """Args:
    time_dist: ``logit_normal`` (the paper) or ``uniform`` draws of (t, r).
    p_mean, p_std: logit-normal parameters of the (t, r) draws (paper: -0.4, 1.0).
    equal_ratio: probability of r = t per sample (ImageNet: 0.75; CIFAR-10: 0.25; py-meanflow's
        ``--ratio`` is the probability of r != t, ``1 - equal_ratio``).
    velocity: ``data`` (eps - x0, the paper) or ``teacher`` (the teacher's v(z_t, t): distillation).
    jvp: ``exact`` (forward-mode AD) or ``finite_difference``.
    fd_step: the finite-difference step in t (1e-3 is ~10% off on nets fed 1000 t: their
        sinusoidal features turn once per unit of 1000 t).
    adaptive_power, adaptive_eps: p and c of the adaptive weight (paper: 1.0, 1e-3).
    sampling_grid: grid whose points are the jump times of n-step sampling.
    sampling_shift: SD3 time shift k of those jump times (k < 1 moves them towards data; 1 keeps them).
    time_scale: k of the student's time inputs (``AverageVelocityModel``): 1000 for a copy of a
        diffusers-style fm teacher (what it was trained with), 1 for raw times as py-meanflow's
        from-scratch UNet (use with ``student=fresh``); an edm-scheme student scales only t - r.
    """

    name = "meanflow"
    fresh_parameters = ("*extra_embed.*", "*class_embedding.*")  # the second time input

    def __init__(
        self,
        time_dist: str = "logit_normal",
        p_mean: float = -0.4,
        p_std: float = 1.0,
        equal_ratio: float = 0.75,
        velocity: str = "teacher",
        jvp: str = "exact",
        fd_step: float = 1e-4,
        adaptive_power: float = 1.0,
        adaptive_eps: float = 1e-3,
        sampling_grid: str = "uniform",
        sampling_shift: float = 1.0,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        check_choice("velocity", velocity, VELOCITIES)
        check_choice("jvp", jvp, JVP_MODES)
        check_choice("sampling_grid", sampling_grid, sorted(GRIDS))
        check_choice("time_dist", time_dist, TIME_DISTS)
        if not 0.0 <= equal_ratio <= 1.0:
            raise ConfigError(f"method.objective.equal_ratio={equal_ratio} must lie in [0, 1]")
        self.time_dist, self.p_mean, self.p_std, self.equal_ratio = time_dist, p_mean, p_std, equal_ratio
        self.velocity, self.jvp_mode, self.fd_step, self.sampling_grid = velocity, jvp, fd_step, sampling_grid
        self.data_role = "real" if velocity == "data" else "marginal"
        # A guidance-input student (methods.md 13) needs guided teacher velocities; the data velocity is unguided.
        self.guidance_input = velocity == "teacher"
        if sampling_shift <= 0:
            raise ConfigError(f"method.objective.sampling_shift={sampling_shift} must be > 0 (1 keeps the grid)")
        self.adaptive_power, self.adaptive_eps = adaptive_power, adaptive_eps
        self.sampling_shift = sampling_shift
        if time_scale <= 0:
            raise ConfigError(
                f"method.objective.time_scale={time_scale} must be > 0 (1: raw times, 1000: diffusers' convention)"
            )
        self.time_scale = time_scale

    def prepare_student(self, student: nn.Module) -> nn.Module:
        """The student as ``u(z, r, t)``; an already converted one (checkpoint reload) is kept."""
        return average_velocity_from(student, self.time_scale)

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if not isinstance(student, AverageVelocityModel):
            raise TypeError("MeanFlow trains an AverageVelocityModel: pass the student through prepare_student")
        r, t = sample_time_pair(
            x0.shape[0], self.p_mean, self.p_std, self.equal_ratio, x0.device, x0.dtype, self.time_dist
        )
        eps = torch.randn_like(x0)
        z = fm_noise(x0, eps, t)
        if self.velocity == "data":
            v = eps - x0
        else:
            with torch.no_grad():
                v = teacher(z, t)
        u, u_tgt = meanflow_target(student, z, r, t, v, self.jvp_mode, self.fd_step)
        err = (u - u_tgt).pow(2).flatten(1).sum(dim=1)
        weighted = adaptive_weight(err, self.adaptive_power, self.adaptive_eps) * err
        return {"loss": weighted.mean(), "mse": err.detach().mean() / x0[0].numel()}

    def sample_times(self, nfe: int) -> Tensor:
        """The jump times: ``nfe + 1`` points of the (shifted) sampling grid, from 1 down to 0."""
        return shift_time(make_grid(self.sampling_grid, nfe), self.sampling_shift)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return [n for n in nfes if n >= 1]

    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """Deterministic jumps ``z_r = z_t - (t - r) u(z_t, r, t)`` along the grid (``renoise`` unused)."""
        return sample_flow_map(AverageVelocityFlowMap(student), noise, self.sample_times(nfe).to(noise))
