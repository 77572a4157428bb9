"""Reflow and InstaFlow-style one-step distillation (Liu et al. 2022, 2023; docs/methods.md 10.1-10.2).

Round r solves the current flow's ODE from fresh noise (round 0: the teacher's) and retrains the
student with the flow-matching loss on those deterministic couplings ``(eps, x_hat)``, which
straightens its paths. An optional last stage distils the final flow into one step,
``eps - v(eps, 1) ~ x_hat``, on pairs of that flow. Pairs are made lazily, one cached shard at
a time, so the first step does not wait for the whole pair set.

With a conditional teacher each pair carries a label (a class, or a row of the prompt table) drawn
with its noise and stored in its shard; the pair is solved under that condition with the teacher's
classifier-free guidance (InstaFlow: pairs from the guided ODE), and the student trains on it under
the same condition, so the reflowed flow and the one-step map are conditional and guidance-free.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.conditioning import Condition, conditioned, guided
from distill.core.errors import ConfigError
from distill.core.grids import make_grid
from distill.core.losses import per_sample_mse
from distill.core.lr_schedule import lr_factor
from distill.core.pairs import PairShards, fingerprint, shard_labels
from distill.core.prediction import fm_noise
from distill.core.process import FlowMatching
from distill.core.straightness import ode_pairs, straightness
from distill.core.tensors import batch_time
from distill.methods.base import (
    Method,
    SamplingPlan,
    check_choice,
    check_counts,
    condition_digest,
    label_condition,
    label_count,
)
from distill.nets.freezing import frozen_copy
from distill.nets.lpips import PerceptualDistance

SAMPLERS = ("euler", "heun")
STUDENT_HEADS = ("teacher", "velocity")


def velocity_head(student: nn.Module) -> nn.Module:
    """The student's network read as an FM velocity ``v(x_s, s) = net(x_s, 1000 s)``: InstaFlow's
    re-parameterisation of the SD1.5 UNet (gnobitab/InstaFlow code/pipeline_rf.py:638-668 feeds the
    raw latents and ``t * 1000``; its sign, ``latents + dt v`` as t falls, is the negative of this FM
    velocity, the one diffusers' FlowMatch scheduler reads, so an export samples with it).

    An epsilon- or v-predicting teacher copy otherwise yields its velocity through ``eps / (1 - s)``,
    which amplifies errors by 15.6 at SD's last timestep and conditions the one-step map badly
    (the PD paper's warning about epsilon at 1-2 steps). A flow network is returned as it is.
    """
    if getattr(student, "prediction", None) == "flow":
        return student
    if not (hasattr(student, "native") and hasattr(student, "prediction") and hasattr(student, "net")):
        raise ConfigError(
            f"method.objective.student_head=velocity re-reads a diffusers network's output; this student is "
            f"{type(student).__name__}: use method.objective.student_head=teacher"
        )
    student.prediction, student.scheme, student.process = "flow", "fm", FlowMatching()
    return student


def with_null_rows(condition: Condition | None, null: Condition | None, drop: Tensor) -> Condition | None:
    """``condition`` (batch B) with the rows where ``drop`` (B,) is true replaced by ``null`` (batch 1):
    condition dropout, so a reflowed flow also learns the unconditional field that CFG needs."""
    if condition is None or null is None or not bool(drop.any()):
        return condition
    if set(null) != set(condition):
        raise ConfigError(
            f"method.objective.condition_dropout needs a null condition with the condition's keys "
            f"{sorted(condition)}, got {sorted(null)}: set method.objective.condition_dropout=0"
        )
    out = {}
    for key, value in condition.items():
        empty = null[key].to(value.device).expand_as(value)
        out[key] = torch.where(drop.to(value.device).view(-1, *[1] * (value.ndim - 1)), empty, value)
    return out


class GuidedFlow(nn.Module):
    """A conditional flow behind classifier-free guidance ``v_null + scale (v_cond - v_null)``."""

    def __init__(self, flow: nn.Module, scale: float, null: Condition):
        super().__init__()
        self.flow, self.scale, self.null = flow, scale, null

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return guided(self.flow, x, s, self.scale, self.null)


class Reflow(Method):
    """``rounds`` reflow rounds (the student becomes the (rounds+1)-rectified flow), then distil.

    Args:
        rounds: reflow rounds k; 0 with ``distill`` is plain one-step distillation of the teacher.
        steps_per_round: optimizer steps per round; None: an equal share of ``train.max_steps``.
        distill: end with the one-step distillation stage (InstaFlow).
        distill_steps: its optimizer steps; None: an equal share of ``train.max_steps``.
        pairs_per_round: size of each stage's pair set (rounded up to whole shards).
        shard_size: pairs per cached shard (made when a step first draws from it).
        ode_steps, ode_sampler, ode_grid: the ODE solve that makes pairs and measures straightness.
        pair_dir: cache directory (a subdirectory per model and settings); None: memory only.
        seed: base seed of the pairs' noise (each stage gets its own).
        straightness_samples: noise samples of the per-round straightness metric.
        condition_dropout: with a conditional teacher, the share of reflow-stage samples trained on
            the null condition (empty prompt / null class), so the reflowed flow is CFG-able.
        distill_guidance: CFG scale of the reflowed flow when it makes the distillation pairs
            (InstaFlow: 1.5 for its 2-RF); needs ``rounds >= 1`` and, to mean anything, condition dropout.
        stage_warmup_steps: linear lr warm-up from 0 at the start of every stage (the official
            reflow and distillation runs each warm up over 5000 steps, ``optim.warmup``).
        student_head: ``teacher`` keeps the teacher's parameterisation; ``velocity`` reads the
            student's network output as the FM velocity (InstaFlow's SD1.5 student; ``velocity_head``).
        distill_loss: the one-step distillation's distance, ``l2`` or ``lpips`` (RectifiedFlow's k = 1
            distillation and InstaFlow's last stage; RGB images).
        lpips: with ``distill_loss: lpips``, ``{backbone, linear, resize}``: local weight files of
            ``distill.nets.lpips.LPIPS``.
    """

    name = "reflow"
    data_role = "shape"  # trains on its cached (noise, endpoint) pairs

    def __init__(
        self,
        rounds: int = 1,
        steps_per_round: int | None = None,
        distill: bool = True,
        distill_steps: int | None = None,
        pairs_per_round: int = 16384,
        shard_size: int = 256,
        ode_steps: int = 16,
        ode_sampler: str = "heun",
        ode_grid: str = "cosine",
        pair_dir: str | None = None,
        seed: int = 0,
        straightness_samples: int = 128,
        student_head: str = "teacher",
        condition_dropout: float = 0.0,
        distill_guidance: float = 1.0,
        stage_warmup_steps: int = 0,
        distill_loss: str = "l2",
        lpips: dict | None = None,
    ):
        super().__init__()
        check_choice("distill_loss", distill_loss, ("l2", "lpips"))
        self.lpips = PerceptualDistance(lpips) if distill_loss == "lpips" else None
        check_counts(
            pairs_per_round=pairs_per_round,
            shard_size=shard_size,
            ode_steps=ode_steps,
            straightness_samples=straightness_samples,
        )
        if rounds < 0 or (rounds == 0 and not distill):
            raise ConfigError(
                f"method.objective.rounds={rounds} must be >= 1, or >= 0 with method.objective.distill=true"
            )
        check_choice("ode_sampler", ode_sampler, SAMPLERS)
        check_choice("student_head", student_head, STUDENT_HEADS)
        self.student_head = student_head
        if not 0 <= condition_dropout < 1:
            raise ConfigError(f"method.objective.condition_dropout={condition_dropout} must be in [0, 1)")
        if distill_guidance != 1.0 and (rounds < 1 or not distill):
            raise ConfigError(
                f"method.objective.distill_guidance={distill_guidance} guides the reflowed flow that makes the "
                "distillation pairs: it needs method.objective.rounds >= 1 and method.objective.distill=true "
                "(the teacher's own pairs use teacher.guidance)"
            )
        self.condition_dropout, self.distill_guidance = condition_dropout, distill_guidance
        if stage_warmup_steps < 0:
            raise ConfigError(f"method.objective.stage_warmup_steps={stage_warmup_steps} must be >= 0 (0: no warm-up)")
        self.stage_warmup_steps = stage_warmup_steps
        make_grid(ode_grid, 1)  # unknown grid names fail here, not at the first step
        self.rounds, self.steps_per_round = rounds, steps_per_round
        self.distill, self.distill_steps = distill, distill_steps
        self.num_shards = math.ceil(pairs_per_round / shard_size)
        self.shard_size, self.seed = shard_size, seed
        self.ode_steps, self.ode_sampler, self.ode_grid = ode_steps, ode_sampler, ode_grid
        self.pair_dir = None if pair_dir is None else Path(pair_dir)
        self.straightness_samples = straightness_samples
        # The flow that makes the pairs of the current stage after round 0 (the last round's student).
        self.snapshots = nn.ModuleDict()
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        # Straightness of the 1-RF (teacher), 2-RF, ..., (rounds+1)-RF; NaN until measured.
        self.register_buffer("straightness", torch.full((rounds + 1,), math.nan))
        self._shards: PairShards | None = None
        self._shards_stage = -1
        self._like: Tensor | None = None  # (1, *sample shape) on the training device and dtype
        self._teacher: tuple[nn.Module, ...] = ()  # what labels mean; a tuple, so never a submodule or checkpointed

    def prepare_student(self, student: nn.Module) -> nn.Module:
        return velocity_head(student) if self.student_head == "velocity" else student

    # --- schedule ---------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return self.rounds + int(self.distill)

    def set_budget(self, max_steps: int) -> None:
        share = max(1, max_steps // self.num_stages)
        if self.steps_per_round is None:
            self.steps_per_round = share
        if self.distill_steps is None:
            self.distill_steps = share if self.distill else 0

    @property
    def num_steps(self) -> int | None:
        if self.steps_per_round is None or (self.distill and self.distill_steps is None):
            return None
        return self.rounds * self.steps_per_round + (self.distill_steps if self.distill else 0)

    def stage_end(self, stage: int) -> int:
        """The step count at which ``stage`` is over."""
        return min(stage + 1, self.rounds) * self.steps_per_round + (self.distill_steps if stage >= self.rounds else 0)

    def lr_scale(self, optimizer: str, step: int) -> float:
        """Linear warm-up from 0 over ``stage_warmup_steps`` at the start of each stage: each stage of
        the official code is a fresh run (gnobitab/RectifiedFlow ImageGeneration/losses.py:40-46)."""
        stage = int(self.stage)
        begin = self.stage_end(stage - 1) if stage > 0 else 0
        return lr_factor(step - begin, warmup_steps=self.stage_warmup_steps)

    @property
    def distilling(self) -> bool:
        return int(self.stage) >= self.rounds

    # --- pairs --------------------------------------------------------------------------------
    def pair_source(self, teacher: nn.Module) -> nn.Module:
        return self.snapshots["flow"] if "flow" in self.snapshots else teacher

    def _start_stage(self, teacher: nn.Module, like: Tensor) -> None:
        """Open the stage's pair shards; measure the straightness of the flow that makes them."""
        stage, source, shape = int(self.stage), self.pair_source(teacher), tuple(like.shape[1:])
        num_labels = label_count(teacher)
        # guidance and the prompt table shape the pairs without being weights of the source
        settings = (
            self.seed,
            stage,
            self.shard_size,
            self.ode_steps,
            self.ode_sampler,
            self.ode_grid,
            *([num_labels, float(getattr(teacher, "guidance", 1.0)), condition_digest(teacher)] if num_labels else []),
        )
        null = getattr(teacher, "null_condition", None)
        if num_labels and null is not None and stage >= self.rounds > 0 and self.distill_guidance != 1.0:
            source = GuidedFlow(source, self.distill_guidance, null)  # InstaFlow's guided 2-RF pairs
            settings = (*settings, "distill_guidance", self.distill_guidance)
        directory = None if self.pair_dir is None else self.pair_dir / fingerprint(source, shape, *settings)

        def endpoint(noise: Tensor, labels: Tensor | None = None) -> Tensor:
            with conditioned(label_condition(teacher, labels)):  # the pair's own condition, not the batch's
                return ode_pairs(source, noise.to(like), self.ode_steps, self.ode_sampler, self.ode_grid)

        self._shards = PairShards(
            directory, self.shard_size, shape, (self.seed, stage), endpoint, num_labels=num_labels
        )
        self._shards_stage = stage
        index = min(stage, self.rounds)  # the distill stage reads the final flow, index `rounds`
        if math.isnan(float(self.straightness[index])):
            self.straightness[index] = self.measure_straightness(source, like, teacher)

    def measure_straightness(self, flow: nn.Module, like: Tensor, teacher: nn.Module) -> Tensor:
        """Straightness from fixed noise (and fixed labels, for a conditional flow)."""
        noise = torch.randn(
            self.straightness_samples, *like.shape[1:], generator=torch.Generator().manual_seed(self.seed + 12345)
        ).to(like)
        num_labels = label_count(teacher)
        labels = shard_labels(self.seed + 12345, 0, len(noise), num_labels) if num_labels else None
        with conditioned(label_condition(teacher, labels)):
            return straightness(flow, noise, make_grid(self.ode_grid, self.ode_steps), self.ode_sampler).float()

    def batch_pairs(self, batch_size: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``batch_size`` pairs ``(noise, endpoint, labels or None)`` from one random shard of the stage
        (made now if it is new)."""
        assert self._shards is not None
        noise, x_hat, labels = self._shards.shard(int(torch.randint(self.num_shards, ())))
        idx = torch.randint(noise.shape[0], (batch_size,))
        return noise[idx].to(like), x_hat[idx].to(like), None if labels is None else labels[idx]

    # --- training -----------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        self._like, self._teacher = x0[:1].detach(), (teacher,)
        if self._shards is None or self._shards_stage != int(self.stage):
            self._start_stage(teacher, x0)
        eps, x_hat, labels = self.batch_pairs(x0.shape[0], x0)
        with conditioned(label_condition(teacher, labels)):  # the pairs' conditions, not the data batch's
            if self.distilling:  # InstaFlow: the one Euler step from s = 1 lands on the coupled endpoint
                x_pred = eps - student(eps, batch_time(1.0, eps))
                per_sample = per_sample_mse(x_pred, x_hat) if self.lpips is None else self.lpips(x_pred, x_hat)
            else:  # flow matching on the coupling: x_s = (1 - s) x_hat + s eps, v = eps - x_hat
                s = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype)
                condition = label_condition(teacher, labels)
                if self.condition_dropout > 0 and condition is not None:
                    drop = torch.rand(x0.shape[0]) < self.condition_dropout
                    condition = with_null_rows(condition, teacher.null_condition, drop)
                with conditioned(condition):
                    per_sample = per_sample_mse(student(fm_noise(x_hat, eps, s), s), eps - x_hat)
        # Every step reports the straightness of the stage's pair source (the logger keeps only
        # every n-th step): a step curve falling round by round.
        source_straightness = self.straightness[min(int(self.stage), self.rounds)].clone()
        return {"loss": per_sample.mean(), "reflow_stage": self.stage.float(), "straightness": source_straightness}

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        stage = int(self.stage)
        if stage >= self.num_stages or step + 1 != self.stage_end(stage):
            return []
        if stage < self.rounds:
            self.snapshots["flow"] = frozen_copy(student)
            if stage + 1 == self.rounds and not self.distill and self._like is not None:
                # No later stage opens with the final flow, so measure it here (buffer only, not logged).
                self.straightness[-1] = self.measure_straightness(self.snapshots["flow"], self._like, *self._teacher)
        self.stage += 1
        # A new stage trains on a new pair set: fresh Adam moments.
        return list(self.optimizer_names)

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        if any(k.startswith("snapshots.flow.") for k in state_dict) and "flow" not in self.snapshots:
            self.snapshots["flow"] = frozen_copy(student)

    # --- sampling -----------------------------------------------------------------------------
    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        """Euler with ``nfe`` uniform steps; after distillation the student is the 1-step map and
        the reflowed flow (its snapshot) takes the multi-step rows."""
        reflowed = self.distill and self.distilling and "flow" in self.snapshots
        model = self.snapshots["flow"] if nfe > 1 and reflowed else student
        return SamplingPlan(model, make_grid("uniform", nfe).tolist(), renoise=False)
