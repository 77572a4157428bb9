"""Phased Consistency Models (Wang et al. 2024; docs/methods.md section 6), in flow-matching coordinates.

The solver grid ``0 = s_0 < s_1 < ... < s_N`` (N = ``num_euler_timesteps``) is cut into M phases
whose lower edges are the grid indices ``e = floor(linspace(0, N, M, endpoint=False))``. Phase m
holds the grid points n with ``e_m < n <= e_{m+1}`` (``e_M = N``), and on it the student's
velocity defines one DDIM jump to the phase's lower edge,

    f^m(x_s, s) = x_s + (s_{e_m} - s) v_theta(x_s, s),

which is the identity at the edge (the boundary condition holds at every edge). Each step pulls
``f^m(x_{s_n})``, with x_{s_n} noised from real data, towards ``stopgrad f^m(x_prev, s_{n-1})`` of
the target network (EMA or the online student), x_prev being one teacher Euler step from s_n.

Sampling with nfe = M jumps edge to edge: exactly the trained maps. Other budgets:

- nfe > M (``extra_nfe=renoise``, default): M - 1 edge jumps, then multistep consistency
  sampling inside the last phase, whose map ``f^0(x_s) = x_s - s v`` is a true consistency
  function to data: jump to data, re-noise with fresh noise to an evenly spaced time inside the
  phase, jump again. ``extra_nfe=euler`` is PCM's deterministic scheduler instead: Euler jumps
  between the grid points ``floor(linspace(0, N, nfe, endpoint=False))``, which keeps every edge
  as a stop for multiples of M but moves sub-jumps off the trained maps (much worse on digits).
- nfe < M: PCM's deterministic scheduler, which stretches a phase's velocity over several
  phases. It is an extrapolation the student never trained for; expect poor samples.

Optional adversarial term (``adv_weight > 0``): the student's edge prediction (fake) and the
target (real) are re-noised from the edge to a random time inside the phase and scored by a
small time-conditioned discriminator owned by this method, with hinge losses (G: PCM's
``relu(1 - D(fake))``). By default D and G both step on every batch (G first; the run budget
counts batches); ``alternate=True`` is PCM's every-other-batch rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.core.ema import ema_update_
from distill.core.errors import ConfigError
from distill.core.gan import hinge_d_loss, hinge_g_loss_pcm, r1_penalty
from distill.core.grids import ddim_grid, make_grid
from distill.core.losses import elementwise_pseudo_huber, per_sample_mse
from distill.core.precision import full_precision
from distill.core.prediction import fm_noise
from distill.core.samplers import ddim_step, prior_state, sample_flow_map
from distill.core.tensors import append_dims
from distill.core.time_sampling import shift_time
from distill.methods.base import Method, Renoise, SamplingPlan, attached, check_choice
from distill.nets.discriminator import build_discriminator, data_shape_of
from distill.nets.freezing import frozen_copy

LOSSES = ("l2", "huber")
TARGETS = ("ema", "online")
EXTRA_NFE = ("renoise", "euler")


def phase_edges(num_steps: int, phases: int) -> Tensor:
    """Grid indices of the phases' lower edges: PCM's ``floor(linspace(0, N, M, endpoint=False))``."""
    if not 1 <= phases <= num_steps:
        raise ValueError(f"phases={phases} must be between 1 and the grid's {num_steps} steps")
    return torch.from_numpy(np.floor(np.linspace(0, num_steps, phases, endpoint=False)).astype(np.int64))


def phase_bounds(n: Tensor, edges: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
    """(lower, upper) edge indices of the phase holding grid points n (>= 1): ``lower < n <= upper``."""
    upper_edges = torch.cat([edges, edges.new_tensor([num_steps])])
    m = torch.searchsorted(edges, n) - 1  # edges < n, minus one: the last edge strictly below n
    return edges[m], upper_edges[m + 1]


def teacher_process(teacher: nn.Module) -> object | None:
    """The noise process of a teacher's velocity model (``teacher.process`` or ``teacher.model.process``)."""
    for module in (teacher, getattr(teacher, "model", None)):
        if module is not None and getattr(module, "process", None) is not None:
            return module.process
    return None


def phased_consistency_fn(model: nn.Module, x: Tensor, s: Tensor, s_edge: Tensor) -> Tensor:
    """``f^m(x_s, s) = x_s + (s_edge - s) v(x_s, s)``: one DDIM jump to the phase edge; x at s = s_edge."""
    return ddim_step(model, x, s, s_edge)


def renoise_within_phase(x_edge: Tensor, s_edge: Tensor, s_adv: Tensor, eps: Tensor) -> Tensor:
    """PCM's re-noising of an edge state to ``s_adv`` in the phase (docs/methods.md 6):
    ``((1 - s_adv) x_edge + (s_adv - s_edge) eps) / (1 - s_edge)``; exact FM noising when s_edge = 0.
    """
    s_edge, s_adv = append_dims(s_edge, x_edge.ndim), append_dims(s_adv, x_edge.ndim)
    return ((1 - s_adv) * x_edge + (s_adv - s_edge) * eps) / (1 - s_edge)


class PhasedConsistency(Method):
    """Args:
    phases: M, number of phases = the NFE the student is trained for.
    num_euler_timesteps: N, steps of the teacher's Euler grid (PCM: 50).
    grid: family of that grid (``distill.core.grids``; PCM's FM scheduler: ``uniform``), or ``ddim``:
        the SD1.5/SDXL scripts' ``DDIMSolver`` timesteps of a discrete (DDPM) teacher, 19, 39, ...,
        999 for N = 50, mapped to FM time by the teacher's process (``distill.core.grids.ddim_grid``).
    shift: SD3 time shift ``k s / (1 + (k - 1) s)`` applied to the grid (PCM's scheduler ``shift``;
        SD3 uses 3). k < 1 moves the grid, hence the phase edges, towards data.
    target: ``online`` (every released PCM script: the student under no_grad,
        ``train_pcm_lora_sd15.py:1261-1281``) or ``ema`` (a lagged copy).
    ema_target: decay of the EMA target network (``target: ema`` only).
    loss: ``l2`` (mean squared error) or ``huber`` (element-wise pseudo-Huber with ``huber_c``).
    huber_c: c of the pseudo-Huber loss (PCM: 1e-3).
    adv_weight: weight of the adversarial G loss; 0 disables the discriminator.
    disc_lr_ratio: discriminator lr / student lr (``lr_scale``).
    alternate: step D and G on alternate batches (PCM) instead of both on every batch.
    r1_gamma: R1 penalty weight on the discriminator (0 disables).
    discriminator: keyword arguments of ``build_discriminator`` (width, depth, embed_dim, pooled).
    data_shape: sample shape for the discriminator; None reads it from the student.
    extra_nfe: how a budget above M is spent: ``renoise`` (multistep consistency in the last
        phase) or ``euler`` (PCM's deterministic scheduler).
    """

    name = "pcm"

    def __init__(
        self,
        phases: int = 2,
        num_euler_timesteps: int = 50,
        grid: str = "uniform",
        shift: float = 1.0,
        target: str = "online",
        ema_target: float = 0.95,
        loss: str = "l2",
        huber_c: float = 1e-3,
        adv_weight: float = 0.0,
        disc_lr_ratio: float = 1.0,
        alternate: bool = False,
        r1_gamma: float = 0.0,
        discriminator: dict[str, Any] | None = None,
        data_shape: Sequence[int] | None = None,
        extra_nfe: str = "renoise",
    ):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        check_choice("target", target, TARGETS)
        check_choice("extra_nfe", extra_nfe, EXTRA_NFE)
        if adv_weight < 0:
            raise ConfigError(
                f"method.objective.adv_weight={adv_weight} must be >= 0 (0 disables the adversarial term)"
            )
        self.num_euler_timesteps, self.num_phases = num_euler_timesteps, phases
        if shift <= 0:
            raise ConfigError(f"method.objective.shift={shift} must be > 0 (1 leaves the grid as it is)")
        self.grid_name, self.shift = grid, shift
        # Ascending: times[0] = 0, times[N] = the top (1 for every grid but karras and ddim). The ddim
        # grid needs the teacher's process: ``attach`` builds it.
        self._times = None if grid == "ddim" else shift_time(make_grid(grid, num_euler_timesteps), shift).flip(0)
        self._state_scale: Tensor | None = None  # per grid point, native state / FM state (ddim grid only)
        self.edges = phase_edges(num_euler_timesteps, phases)
        self.target_kind, self.ema_target = target, ema_target
        self.loss_kind, self.huber_c = loss, huber_c
        self.adv_weight, self.disc_lr_ratio, self.alternate, self.r1_gamma = (
            adv_weight,
            disc_lr_ratio,
            alternate,
            r1_gamma,
        )
        self.discriminator_kwargs = dict(discriminator or {})
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.extra_nfe = extra_nfe
        if adv_weight > 0:
            self.optimizer_names = ("student", "discriminator")
        # A guidance-input student (methods.md 13): its discriminator would need the guidance input too.
        self.guidance_input = adv_weight == 0
        self.target_net: nn.Module | None = None
        self.discriminator: nn.Module | None = None

    @property
    def times(self) -> Tensor:
        if self._times is None:
            raise RuntimeError(
                "method.objective.grid=ddim: the grid is read from the teacher when the method is "
                "attached to it (attach)"
            )
        return self._times

    @property
    def double_backward(self) -> bool:
        return self.adv_weight > 0 and self.r1_gamma > 0  # R1 differentiates D's gradient on real data

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.grid_name == "ddim":
            process = teacher_process(teacher)
            if not hasattr(process, "num_train_timesteps"):
                raise ConfigError(
                    f"method.objective.grid=ddim needs a discrete-timestep (DDPM) teacher such as a "
                    f"diffusers SD1.5 pipeline; this teacher's process is {type(process).__name__}: "
                    "use grid=uniform"
                )
            self._times = shift_time(ddim_grid(process, self.num_euler_timesteps), self.shift).flip(0)
            # PCM compares the edge states in the teacher's own (VP) coordinates: x_t = (alpha + sigma) x_s.
            native_t = process.from_fm_time(self._times)
            self._state_scale = process.alpha(native_t) + process.sigma(native_t)
        # The networks the method owns (checkpointed as method.target_net.*, method.discriminator.*).
        if self.target_kind != "online" and self.target_net is None:
            self.target_net = frozen_copy(student)
        if self.adv_weight > 0 and self.discriminator is None:
            shape = self.data_shape or data_shape_of(student)
            device = next(student.parameters()).device
            self.discriminator = build_discriminator(shape, **self.discriminator_kwargs).to(device)

    def _target(self, student: nn.Module) -> nn.Module:
        return student if self.target_kind == "online" else attached(self.target_net, "PCM's EMA target")

    def _discriminator(self) -> nn.Module:
        return attached(self.discriminator, "PCM's discriminator")

    def trainable_parameters(self, optimizer: str, student: nn.Module):
        if optimizer == "discriminator":
            return self._discriminator().parameters()
        return super().trainable_parameters(optimizer, student)

    def phases(self, step: int) -> Sequence[str]:
        if self.adv_weight == 0:
            return ("student",)
        if self.alternate:
            return ("student",) if step % 2 == 0 else ("discriminator",)
        return ("student", "discriminator")

    def lr_scale(self, optimizer: str, step: int) -> float:
        return self.disc_lr_ratio if optimizer == "discriminator" else 1.0

    # --- the objective --------------------------------------------------------------------
    def consistency_pair(
        self, x0: Tensor, eps: Tensor, n: Tensor, teacher: nn.Module, student: nn.Module
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Student prediction and stop-gradient target at grid points n (B,) in 1..N.

        Returns:
            (pred, target, s_edge, s_upper): both states at the phase's lower edge, and the
            phase's (B,) edge times.
        """
        times = self.times.to(x0)
        lower, upper = phase_bounds(n, self.edges.to(n.device), self.num_euler_timesteps)
        s, s_prev, s_edge = times[n], times[n - 1], times[lower]
        x_s = fm_noise(x0, eps, s)
        with torch.no_grad(), full_precision():  # the teacher step and target in fp32 under bf16-mixed
            x_prev = ddim_step(teacher, x_s, s, s_prev)  # the teacher's Euler step (no CFG here)
            target = phased_consistency_fn(self._target(student), x_prev, s_prev, s_edge)
            # At a phase's first grid point the target is x_prev itself (PCM's c_skip = 1 boundary); the
            # network is not asked, which an x0-predicting one could not answer at s = 0.
            target = torch.where(append_dims(s_prev == s_edge, x0.ndim), x_prev, target.nan_to_num())
        pred = phased_consistency_fn(student, x_s, s, s_edge)
        return pred, target, s_edge, times[upper]

    def native_scale(self, s_edge: Tensor, like: Tensor) -> Tensor | float:
        """Factor from FM states at the edge times ``s_edge`` (B,) to the teacher's native states
        (``grid: ddim``), shaped for ``like``; 1 on the other grids, whose states are FM's."""
        if self._state_scale is None:
            return 1.0
        index = torch.searchsorted(self.times.to(s_edge), s_edge)
        return append_dims(self._state_scale.to(like)[index], like.ndim)

    def _distance(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.loss_kind == "l2":
            return per_sample_mse(pred, target)
        return elementwise_pseudo_huber(pred, target, self.huber_c)

    def _draw(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        n = torch.randint(1, self.num_euler_timesteps + 1, (x0.shape[0],), device=x0.device)
        return n, torch.randn_like(x0)

    def _adversarial_time(self, s_edge: Tensor, s_upper: Tensor) -> Tensor:
        return s_edge + torch.rand_like(s_edge) * (s_upper - s_edge)

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if phase == "discriminator":
            return self._discriminator_loss(x0, teacher, student)
        n, eps = self._draw(x0)
        pred, target, s_edge, s_upper = self.consistency_pair(x0, eps, n, teacher, student)
        scale = self.native_scale(s_edge, pred)
        consistency = self._distance(scale * pred, scale * target).mean()
        if self.adv_weight == 0:
            return {"loss": consistency}
        s_adv = self._adversarial_time(s_edge, s_upper)
        fake = renoise_within_phase(pred, s_edge, s_adv, torch.randn_like(pred))
        adversarial = hinge_g_loss_pcm(self._discriminator()(fake, s_adv))
        return {
            "loss": consistency + self.adv_weight * adversarial,
            "consistency": consistency,
            "adversarial": adversarial,
        }

    def _discriminator_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module) -> dict[str, Tensor]:
        disc = self._discriminator()
        n, eps = self._draw(x0)
        with torch.no_grad():
            pred, target, s_edge, s_upper = self.consistency_pair(x0, eps, n, teacher, student)
        s_adv = self._adversarial_time(s_edge, s_upper)
        noise = torch.randn_like(x0)  # shared by real and fake: D compares like with like
        fake = renoise_within_phase(pred, s_edge, s_adv, noise)
        real = renoise_within_phase(target, s_edge, s_adv, noise).requires_grad_(self.r1_gamma > 0)
        real_logits, fake_logits = disc(real, s_adv), disc(fake, s_adv)
        hinge = hinge_d_loss(real_logits, fake_logits)
        r1 = r1_penalty(real, real_logits, self.r1_gamma) if self.r1_gamma > 0 else torch.zeros_like(hinge)
        return {
            "loss": hinge + r1,
            "hinge": hinge,
            "r1": r1.detach(),
            "real_prob": torch.sigmoid(real_logits).mean().detach(),
            "fake_prob": torch.sigmoid(fake_logits).mean().detach(),
        }

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        if self.target_kind == "ema":
            ema_update_(self._target(student), student, self.ema_target)
        return []

    # --- sampling ---------------------------------------------------------------------------
    def sample_times(self, nfe: int) -> Tensor:
        """Deterministic stops ``[s_N, ..., 0]``: the top and the edges of an nfe-phase split of the grid."""
        stops = self.times[phase_edges(self.num_euler_timesteps, nfe)]
        # The last stop is the data (s = 0) even where the grid's lowest point is above it (ddim): the
        # final jump extends the last phase's map to clean data, as DDIM's last step does.
        return torch.cat([self.times[-1:], stops[1:].flip(0), stops.new_zeros(1)])

    def last_phase_times(self, nfe: int) -> Tensor:
        """``[s_{e_1}, re-noising times..., 0]``: the nfe - M + 1 jumps spent inside the last phase."""
        top = float(self.sample_times(self.num_phases)[-2])  # s_{e_1}, or the grid's top when M = 1
        return torch.linspace(top, 0.0, nfe - self.num_phases + 2, dtype=self.times.dtype)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        limit = self.num_euler_timesteps if self.extra_nfe == "euler" else float("inf")  # euler: grid points
        return [n for n in nfes if 1 <= n <= limit]

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan | None:
        if nfe <= self.num_phases or self.extra_nfe == "euler":  # the plain Euler chain through phase edges
            return SamplingPlan(student, self.sample_times(nfe).tolist(), renoise=False)
        return None

    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """Edge-to-edge jumps (the plan); a budget above M re-noises inside the last phase with ``renoise(i)``."""
        if nfe <= self.num_phases or self.extra_nfe == "euler":
            return super().sample(student, noise, nfe, renoise)
        flow_map = partial(ddim_step, student)
        edges = self.sample_times(self.num_phases).to(noise)
        x = sample_flow_map(flow_map, prior_state(noise, edges[0]), edges[:-1])  # to the last phase's top
        renoise = renoise or (lambda i: torch.randn_like(noise))
        # An Euler jump to s = 0 is the last phase's map f^0: re-noising makes it multistep consistency.
        return sample_flow_map(flow_map, x, self.last_phase_times(nfe).to(noise), renoise_fn=renoise)
