"""Bezier distillation from one or several teachers (Feng & Yang, arXiv 2503.16562; docs/methods.md 9).

The arXiv entry is a short proposal without experiments, so this is docs/methods.md's reconstruction,
not the authors' code. From the same noise eps, every teacher's ODE is solved and its states are
recorded at fixed times; those trajectories shape one degree-n Bezier curve per noise, from
``P_0 = eps`` to a data end ``P_n`` (one teacher's endpoint, the per-sample medoid of the
teachers' endpoints, or their mean), with interior control points fitted to all trajectories by
least squares (option A) or set to the teachers' mean endpoint, the guiding point (option B). The
student learns to move along those curves.

Time convention: the paper's tau runs from 0 (noise) to 1 (data); in our FM time s (1: noise,
``x_s = (1 - s) x0 + s eps``, ``v = dx/ds = eps - x0``) a curve point is ``x_s = B(1 - s)`` and its
FM velocity is ``dx/ds = -B'(1 - s)``. Degree 1 is exactly the FM line through the teacher pair.

The student is a flow map ``Phi(x, s -> r) = x - (s - r) u(x, r, s)`` (the average-velocity net
of ``distill.students.average_velocity``), trained on curve points ``x = B(1 - s)`` with
- the drift-fitting (endpoint) loss ``||Phi(x, s -> 0) - P_n||^2``; ``Phi(eps, 1 -> 0)`` is the
  one-step generator T(eps, 0) of docs/methods.md 9 (ii);
- the velocity loss ``||u(x, s, s) + B'(1 - s)||^2``, docs/methods.md 9 (i), same net at r = s;
- a curve term ``||Phi(x, s -> r) - B(1 - r)||^2``, r ~ U(0, s): the exact intermediate positions
  of docs/methods.md 9 (iii), so n-step sampling moves along the predicted curve and re-predicts.

Teacher trajectories are solved lazily, one cached shard at a time (``distill.core.pairs``), so a
resumed or repeated run reads them back. The method's teachers are held outside the module tree:
frozen, never in a checkpoint, moved to the training device when their first shard is solved. The
run's teacher (the student's initialisation and the teacher rows of the evaluation) makes the
curves when no teachers are listed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.bezier import bezier, bezier_velocity, fit_interior
from distill.core.conditioning import conditioned
from distill.core.errors import ConfigError
from distill.core.grids import GRIDS, make_grid
from distill.core.losses import per_sample_mse
from distill.core.pairs import PairShards, fingerprint
from distill.core.samplers import prior_state, sample_flow_map
from distill.core.straightness import ode_states
from distill.core.tensors import append_dims
from distill.methods.base import (
    Method,
    Renoise,
    check_choice,
    check_counts,
    condition_digest,
    label_condition,
    label_count,
)
from distill.students.average_velocity import (
    AverageVelocityFlowMap,
    AverageVelocityModel,
    average_velocity_from,
)
from distill.teachers import load_teacher

CONTROLS = ("least_squares", "guide")
COMBINES = ("separate", "ensemble")
ENDPOINTS = ("mean", "medoid")
SAMPLERS = ("euler", "heun")


def load_teachers(teachers: Sequence[str | Path | nn.Module] | str | Path | None) -> list[nn.Module]:
    """Checkpoint directories (or ready modules) as frozen teachers, in order; one path: that
    teacher alone; None: none."""
    if isinstance(teachers, (str, Path)):
        teachers = [teachers]
    loaded = [t if isinstance(t, nn.Module) else load_teacher(t) for t in teachers or ()]
    return [t.eval().requires_grad_(False) for t in loaded]


class MeanVelocity(nn.Module):
    """Several velocity models as one: the average of their velocities (an ensemble teacher)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.models = list(models)  # not submodules: the ensemble never lands in a state dict

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return torch.stack([m(x, s) for m in self.models]).mean(0)


def endpoint_of(ends: Tensor, choice: str | int) -> Tensor:
    """P_n from the teachers' endpoints (J, B, ...): teacher ``choice``, their ``mean`` or ``medoid``."""
    if choice == "mean":
        return ends.mean(0)
    if choice == "medoid":
        flat = ends.flatten(2).transpose(0, 1)  # (B, J, D)
        pick = torch.cdist(flat, flat).sum(2).argmin(1)
        return ends[pick, torch.arange(ends.shape[1], device=ends.device)]
    return ends[choice]


class BezierDistillation(Method):
    """Args:
    teachers: the teacher checkpoint dirs (or modules) whose trajectories make the curves, each
        listed once (the run's teacher only if listed), or one dir; None or empty: the run's teacher
        alone. The student is a copy of the run's teacher either way.
    combine: ``separate`` (every teacher's own ODE, combined into control points) or ``ensemble``
        (one ODE of the teachers' mean velocity: the teachers act as one).
    degree: n of the Bezier curves (1: straight lines, 2: quadratic, 3: cubic).
    control: ``least_squares`` (option A: interior points fitted to every teacher's states at
        ``record_times``) or ``guide`` (option B: every interior point is the teachers' mean endpoint).
    endpoint: P_n: an index into the teachers (0: the first, docs/methods.md's y_best when it is the
        strongest), ``medoid`` (per noise, the teacher endpoint nearest the others in summed L2:
        the consensus, kept sharp; with two teachers the first) or ``mean`` (their average).
    record_times: FM times s in (0, 1) where trajectories are recorded (the endpoint is always).
    num_pairs, shard_size: trajectories in the cache (rounded up to whole shards), per shard.
    ode_steps, ode_sampler, ode_grid: the teachers' ODE solve (the record times join the grid).
    pair_dir: cache directory (a subdirectory per teacher set and settings); None: memory only.
    seed: seed of the trajectories' noise.
    velocity_weight, curve_weight: lambda of the velocity loss and of the curve term.
    start_ratio: share of each batch placed at s = 1 (x = eps), where the one-step generator starts.
    sampling_grid: grid whose points are the jump times of n-step sampling.
    """

    name = "bezier"
    data_role = "shape"  # trains on its teachers' cached trajectories from noise

    def __init__(
        self,
        teachers: Sequence[str | Path | nn.Module] | str | Path | None = None,
        combine: str = "separate",
        degree: int = 2,
        control: str = "least_squares",
        endpoint: str | int = 0,
        record_times: Sequence[float] = (0.75, 0.5, 0.25),
        num_pairs: int = 16384,
        shard_size: int = 128,
        ode_steps: int = 16,
        ode_sampler: str = "heun",
        ode_grid: str = "cosine",
        pair_dir: str | None = None,
        seed: int = 0,
        velocity_weight: float = 1.0,
        curve_weight: float = 1.0,
        start_ratio: float = 0.25,
        sampling_grid: str = "uniform",
    ):
        super().__init__()
        check_choice("control", control, CONTROLS)
        check_choice("combine", combine, COMBINES)
        check_choice("ode_sampler", ode_sampler, SAMPLERS)
        check_choice("sampling_grid", sampling_grid, sorted(GRIDS))
        make_grid(ode_grid, 1)  # unknown grid names fail here, not at the first step
        check_counts(degree=degree, num_pairs=num_pairs, shard_size=shard_size, ode_steps=ode_steps)
        times = tuple(float(t) for t in record_times)
        if any(not 0.0 < t < 1.0 for t in times) or len(set(times)) != len(times):
            raise ConfigError(f"method.objective.record_times={list(times)} must be distinct FM times in (0, 1)")
        if control == "least_squares" and len(times) < degree - 1:
            raise ConfigError(
                f"method.objective.record_times: a degree-{degree} least-squares fit needs at least "
                f"{degree - 1} record times, got {len(times)}"
            )
        if not 0.0 <= start_ratio <= 1.0:
            raise ConfigError(f"method.objective.start_ratio={start_ratio} must lie in [0, 1]")
        self.degree, self.control, self.endpoint, self.record_times = degree, control, endpoint, times
        self.num_shards, self.shard_size = math.ceil(num_pairs / shard_size), shard_size
        self.ode_steps, self.ode_sampler, self.ode_grid = ode_steps, ode_sampler, ode_grid
        self.pair_dir = None if pair_dir is None else Path(pair_dir)
        self.seed, self.start_ratio, self.sampling_grid = seed, start_ratio, sampling_grid
        self.velocity_weight, self.curve_weight = velocity_weight, curve_weight
        # A plain list, not submodules: never in the state dict, never trained, never EMA'd.
        self.teachers: list[nn.Module] = load_teachers(teachers)
        self.combine = combine
        count = self.num_trajectories
        if not (endpoint in ENDPOINTS or (type(endpoint) is int and 0 <= endpoint < count)):
            raise ConfigError(
                f"method.objective.endpoint={endpoint!r}; choose one of {ENDPOINTS} or a teacher index below {count}"
            )
        self._shards: PairShards | None = None

    @property
    def num_teachers(self) -> int:
        return max(1, len(self.teachers))

    @property
    def num_trajectories(self) -> int:
        """Trajectories per noise: one per teacher, or one of the whole ensemble."""
        return 1 if self.combine == "ensemble" else self.num_teachers

    def prepare_student(self, student: nn.Module) -> nn.Module:
        """The student as the flow map's ``u(x, r, s)``; an already converted one is kept."""
        return average_velocity_from(student)

    # --- teacher trajectories ---------------------------------------------------------------
    def _open_shards(self, teacher: nn.Module, like: Tensor) -> PairShards:
        shape = tuple(like.shape[1:])
        for i, member in enumerate(self.teachers):
            if tuple(member.data_shape) != shape:
                raise ConfigError(
                    f"method.objective.teachers[{i}] makes samples of shape {tuple(member.data_shape)}, the run's "
                    f"data has shape {shape}"
                )
            member.to(like.device)
        teachers = self.teachers or [teacher]
        num_labels = label_count(teacher)  # a conditional teacher: each noise carries a label (reflow's way)
        settings = (
            self.seed,
            self.shard_size,
            self.record_times,
            self.ode_steps,
            self.ode_sampler,
            self.ode_grid,
            self.combine,
            *([num_labels, float(getattr(teacher, "guidance", 1.0)), condition_digest(teacher)] if num_labels else []),
        )
        prints = [fingerprint(t, shape, *settings) for t in teachers]
        for i, key in enumerate(prints[1:]):
            if key in prints[: i + 1]:
                raise ConfigError(f"method.objective.teachers[{i + 1}] repeats an earlier teacher: list each once")
        directory = (
            None if self.pair_dir is None else self.pair_dir / fingerprint(teachers[0], shape, *settings, prints)
        )
        times = (*self.record_times, 0.0)
        sources = [MeanVelocity(teachers)] if self.combine == "ensemble" else teachers

        def trajectories(noise: Tensor, labels: Tensor | None = None) -> Tensor:  # (size, J, times + 1, *shape)
            x = noise.to(like)
            with conditioned(label_condition(teacher, labels)):  # the noise's own condition, not the batch's
                runs = [ode_states(t, x, times, self.ode_steps, self.ode_sampler, self.ode_grid) for t in sources]
            return torch.stack(runs).movedim(2, 0)

        target_shape = (len(sources), len(times), *shape)
        return PairShards(
            directory, self.shard_size, shape, self.seed, trajectories, target_shape=target_shape, num_labels=num_labels
        )

    def batch_trajectories(self, teacher: nn.Module, x0: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(eps, states, labels or None)``: B noises of one random shard (solved now if new), their
        teachers' states, (B, teachers, record times + 1, ...), the endpoint last, and their labels."""
        if self._shards is None:
            self._shards = self._open_shards(teacher, x0)
        noise, states, labels = self._shards.shard(int(torch.randint(self.num_shards, ())))
        idx = torch.randint(noise.shape[0], (x0.shape[0],))
        return noise[idx].to(x0), states[idx].to(x0), None if labels is None else labels[idx]

    def control_points(self, eps: Tensor, states: Tensor) -> Tensor:
        """(n + 1, B, ...) control points from the noise and the teachers' states (B, J, M + 1, ...)."""
        states = states.movedim(0, 2)  # (J, M + 1, B, ...)
        ends = states[:, -1]
        end = endpoint_of(ends, self.endpoint)
        if self.control == "guide":
            interior = ends.mean(0).expand(self.degree - 1, *end.shape)
        else:  # every teacher's samples enter one fit (repeated times: the mean trajectory's fit)
            tau = 1 - torch.tensor(self.record_times, dtype=eps.dtype, device=eps.device).repeat(len(states))
            interior = fit_interior(eps, end, tau, states[:, :-1].flatten(0, 1), self.degree)
        return torch.cat([eps[None], interior, end[None]])

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if not isinstance(student, AverageVelocityModel):
            raise TypeError(
                "Bezier distillation trains an AverageVelocityModel: pass the student through prepare_student"
            )
        eps, states, labels = self.batch_trajectories(teacher, x0)
        points = self.control_points(eps, states)
        b = eps.shape[0]
        s = torch.rand(b, device=eps.device, dtype=eps.dtype)
        s[: round(self.start_ratio * b)] = 1.0
        x = bezier(points, 1 - s)
        # One call for every term: (x, s -> 0) endpoint, (x, s -> s) velocity, (x, s -> r) curve.
        r = torch.cat([torch.zeros_like(s), s, s * torch.rand_like(s)])
        z, t = torch.cat([x, x, x]), s.repeat(3)
        with conditioned(label_condition(teacher, labels)):  # the trajectories' conditions, tiled over the 3 copies
            u = student(z, r, t)
        jump = z - append_dims(t - r, z.ndim) * u
        terms = {
            "endpoint": per_sample_mse(jump[:b], points[-1]).mean(),
            "velocity": per_sample_mse(u[b : 2 * b], -bezier_velocity(points, 1 - s)).mean(),
            "curve": per_sample_mse(jump[2 * b :], bezier(points, 1 - r[2 * b :])).mean(),
        }
        loss = terms["endpoint"] + self.velocity_weight * terms["velocity"] + self.curve_weight * terms["curve"]
        # How far apart the teachers land from the same noise (0 with one trajectory per noise).
        spread = states[:, :, -1].var(1, unbiased=False).mean() if self.num_trajectories > 1 else x0.new_zeros(())
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}, "teacher_spread": spread}

    # --- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """``nfe`` jumps along the predicted curve, ``x_r = Phi(x_s, s -> r)`` on the sampling grid;
        one jump is the generator ``T(eps, 0)`` (``renoise`` unused: deterministic)."""
        grid = make_grid(self.sampling_grid, nfe).to(noise)
        return sample_flow_map(AverageVelocityFlowMap(student), prior_state(noise), grid)
