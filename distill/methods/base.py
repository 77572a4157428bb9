"""The contract between a distillation objective and the Lightning layer that runs it.

A method never owns the teacher or the student: ``DistillModule`` does, and passes them in. It
owns only what is its own (auxiliary networks, round snapshots, counters), so that what it holds
lands in checkpoints exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.core.conditioning import LABELS, Condition, table_rows, table_size
from distill.core.errors import ConfigError

Renoise = Callable[[int], Tensor]
"""Fresh unit noise for re-noising step i, of the samples' shape (per-sample seeded in evaluation)."""


@dataclass
class SamplingPlan:
    """How a student samples at one NFE, in the terms of diffusers' ``FlowMatchEulerDiscreteScheduler``
    (what ``distill-export`` writes): the velocity network, the FM times, and whether each step is
    an Euler step (``renoise=False``) or a jump to data re-noised to the next time (its
    ``stochastic_sampling``, i.e. multistep consistency sampling). Sampling starts at
    ``sigmas[0] * noise``."""

    network: nn.Module
    sigmas: list[float]
    renoise: bool


def follow_plan(plan: SamplingPlan, noise: Tensor, renoise: Renoise | None = None) -> Tensor:
    """Run a ``SamplingPlan`` exactly as the scheduler it describes would (the export's reference)."""
    sigmas = torch.tensor(plan.sigmas, dtype=torch.float64).to(noise)
    x = sigmas[0] * noise
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].expand(x.shape[0]), sigmas[i + 1]
        v = plan.network(x, s)
        if plan.renoise:
            fresh = renoise(i) if renoise is not None else torch.randn_like(x)
            x = (1 - s_next) * (x - sigmas[i] * v) + s_next * fresh
        else:
            x = x + (s_next - sigmas[i]) * v
    return x


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


def check_choice(option: str, value: object, choices: Iterable[object]) -> None:
    """Refuse a config value outside ``choices``, naming the ``method.objective.<option>`` key and its options."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"method.objective.{option}={value!r}; choose one of {choices}")


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
    # What the data batch's images are to ``loss``: ``shape`` (only the batch's size, shape and
    # condition are read), ``marginal`` (x0 is noised to sample the teacher's marginals, so the
    # teacher's own samples serve as well) or ``real`` (compared with real images: a GAN's real
    # side, a data velocity). A prompt-only dataset serves ``shape`` and ``marginal`` methods.
    data_role: str = "marginal"

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
        """Give the freshly built student the parameterization this method trains (default: as is)."""
        return student

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        """Build the auxiliary networks that start from the teacher (a fake-score net), or that read
        the student's shape, before any optimizer asks for their parameters (default: none)."""

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        return (p for p in student.parameters() if p.requires_grad)

    def phases(self, step: int) -> Sequence[str]:
        """Which optimizers step at ``step``, in order (multi-optimizer methods alternate here)."""
        return self.optimizer_names

    def lr_scale(self, optimizer: str, step: int) -> float:
        return 1.0

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        """Scalar terms for one phase; ``"loss"`` is what gets back-propagated."""
        raise NotImplementedError

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        """Update method state after a step; return the optimizers whose state must be reset."""
        return []

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        """Create the submodules a checkpoint's ``method.*`` keys need before it is loaded."""

    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """Generate from unit Gaussian ``noise`` with ``nfe`` student evaluations.

        Stochastic samplers draw step i's fresh noise from ``renoise(i)`` (else the global RNG).
        """
        raise NotImplementedError

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan | None:
        """``sample`` as a ``SamplingPlan``, or None where a scheduler cannot express it (default)."""
        return None

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return list(nfes)
