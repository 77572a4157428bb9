"""The contract between a distillation objective and the Lightning layer that runs it.

A method never owns the teacher or the student: ``DistillModule`` does, and passes them in. It
owns only what is its own (auxiliary networks, round snapshots, counters), so that what it holds
lands in checkpoints exactly once.

Which hook builds what:

- ``prepare_student`` changes the student itself (a new head, a wrapper, new inputs). It runs on
  the freshly built student, before LoRA adapters and ``init_from`` weights, and builds nothing else.
- ``attach`` builds every network the method owns (fake score, discriminator, GAN heads, target
  copy) once, eagerly, from the teacher and the final student (after LoRA and ``init_from``). It
  runs in ``DistillModule.__init__``: before any optimizer asks for parameters, before a checkpoint
  loads into them, and before the strategy moves, casts or shards the module.
- ``prepare_to_load`` only resizes state that grows during training (PD's and reflow's round
  snapshots, DMD2's regression pairs) to a checkpoint's, before it loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from distill.core.conditioning import LABELS, Condition, table_rows, table_size
from distill.core.errors import ConfigError
from distill.core.samplers import Renoise, SamplingPlan, follow_plan

FALLBACK_BUDGET = 1000
"""What a warm-up given as a fraction of the budget is a fraction of when no budget was set."""


def label_count(teacher: nn.Module) -> int:
    """How many labels a conditional teacher's own pair sets draw from: its prompt table's rows or its
    classes (0: unconditional). A label stands for the condition ``label_condition`` makes of it."""
    table = getattr(teacher, "prompt_table", None)
    return table_size(table) if table is not None else int(getattr(teacher, "num_classes", 0))


def label_condition(teacher: nn.Module, labels: Tensor | None) -> Condition | None:
    """The condition of ``labels`` (B,): prompt-table rows of a text teacher, else class labels;
    None for no labels (unconditional)."""
    if labels is None:
        return None
    table = getattr(teacher, "prompt_table", None)
    return table_rows(table, labels.cpu()) if table is not None else {LABELS: labels}


def condition_digest(teacher: nn.Module) -> list[tuple[str, tuple[int, ...], float]]:
    """A summary of a text teacher's prompt table (its rows are what pair labels stand for)."""
    table = getattr(teacher, "prompt_table", None)
    if table is None:
        return []
    rows = table_rows(table, torch.arange(table_size(table)))
    return [(k, tuple(v.shape), float(v.double().sum())) for k, v in sorted(rows.items())]


def attached(network: nn.Module | None, what: str) -> nn.Module:
    """``network`` as ``attach`` built it; a clear error where a caller skipped ``attach``."""
    if network is None:
        raise RuntimeError(f"{what} is built by Method.attach(teacher, student): call it first (DistillModule does)")
    return network


def check_choice(option: str, value: object, choices: Iterable[object]) -> None:
    """Refuse a config value outside ``choices``, naming the ``method.objective.<option>`` key and its options."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"method.objective.{option}={value!r}; choose one of {choices}")


def check_sampling_sigmas(sigmas: Sequence[float] | None) -> tuple[float, ...] | None:
    """``method.objective.sampling_sigmas`` as a tuple, refused unless strictly decreasing and positive."""
    if sigmas is None:
        return None
    sigmas = tuple(float(x) for x in sigmas)
    if not sigmas or any(x <= 0 for x in sigmas) or any(a <= b for a, b in zip(sigmas, sigmas[1:], strict=False)):
        raise ConfigError(
            f"method.objective.sampling_sigmas={list(sigmas)} must be a non-empty, strictly decreasing list of "
            "positive EDM sigmas (e.g. [0.821]), or null for the sampling grid"
        )
    return sigmas


def check_counts(**counts: int) -> None:
    """Refuse a count below 1, naming its ``method.objective.<option>`` key."""
    for option, value in counts.items():
        if value < 1:
            raise ConfigError(f"method.objective.{option}={value} must be >= 1")


class Method(nn.Module):
    """Base class: one optimizer named ``student``, stepped every step, constant learning rate."""

    name: str = "method"
    optimizer_names: tuple[str, ...] = ("student",)
    # Student parameters prepare_student creates (new heads, new inputs): a LoRA student trains
    # them fully instead of freezing them with the body (fnmatch patterns over parameter names).
    fresh_parameters: tuple[str, ...] = ()
    # Whether every network call of ``loss`` works on the data batch (or stacked copies of it), so
    # a class-conditional run's labels apply (``distill.core.conditioning``). Methods that solve
    # their own cached pair sets say False: their pairs carry no labels.
    class_conditional: bool = True
    # Whether the student may take the guidance scale as an input (``student.guidance_range``): its
    # student is a velocity or flow-map network that learns from guided teacher velocities alone.
    # Methods with networks of their own that model the student (a fake score, a discriminator) say
    # False: those would need the guidance input too.
    guidance_input: bool = False
    # What the data batch's images are to ``loss``: ``shape`` (only the batch's size, shape and
    # condition are read), ``marginal`` (x0 is noised to sample the teacher's marginals, so the
    # teacher's own samples serve as well) or ``real`` (compared with real images: a GAN's real
    # side, a data velocity). A prompt-only dataset serves ``shape`` and ``marginal`` methods.
    data_role: str = "marginal"

    @property
    def double_backward(self) -> bool:
        """Whether ``loss`` differentiates a gradient (an R1 penalty); FSDP refuses such a method
        (``distill.lit.sharding``)."""
        return False

    @property
    def num_steps(self) -> int | None:
        """Training length the method itself dictates (e.g. PD's rounds), or None."""
        return None

    def set_budget(self, max_steps: int) -> None:
        """Fit the method's own schedule into the run's training length (default: nothing to fit)."""

    def set_batch(self, global_batch: int) -> None:
        """The run's samples per optimizer step over all devices, for schedules stated in training
        images (default: unused)."""

    def prepare_student(self, student: nn.Module) -> nn.Module:
        """Give the freshly built student the parameterization this method trains (default: as is).
        Runs before LoRA and ``init_from``; builds no other network (that is ``attach``'s)."""
        return student

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        """Build every network the method owns (fake score, discriminator, heads, target copy) from
        the teacher and the final student, once, before any optimizer or checkpoint needs it
        (default: none)."""

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        return (p for p in student.parameters() if p.requires_grad)

    def phases(self, step: int) -> Sequence[str]:
        """Which optimizers step at ``step``, in order (multi-optimizer methods alternate here)."""
        return self.optimizer_names

    def lr_scale(self, optimizer: str, step: int) -> float:
        return 1.0

    def grad_value_clip(self, optimizer: str) -> float:
        """Bound on each gradient element of ``optimizer``'s step, applied before ``method.grad_clip``'s
        norm clipping (default 0: none; SiDA clips its fake score's at 1)."""
        return 0.0

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        """Scalar terms for one phase; ``"loss"`` is what gets back-propagated."""
        raise NotImplementedError

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        """Update method state after a step; return the optimizers whose state must be reset."""
        return []

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        """Resize the state that grows during training (snapshots, pair sets) to the checkpoint's
        ``method.*`` keys before it loads (default: nothing grows; ``attach`` built the rest)."""

    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """Generate from unit Gaussian ``noise`` with ``nfe`` student evaluations.

        Stochastic samplers draw step i's fresh noise from ``renoise(i)`` (else the global RNG). The
        default walks ``sampling_plan``; only a method whose sampling no plan states overrides this.
        """
        plan = self.sampling_plan(student, nfe)
        if plan is None:
            raise NotImplementedError(f"{type(self).__name__} states no sampling plan at nfe={nfe}: override sample")
        return follow_plan(plan, noise, renoise)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan | None:
        """``sample`` as a ``SamplingPlan``, or None where a scheduler cannot express it (default)."""
        return None

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return list(nfes)
