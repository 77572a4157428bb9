"""``init_from``: start a run's student from another run's weights, so staged recipes are config pairs.

Only the student is taken (the EMA copy the run sampled with, or the raw student). The new run's
method may be a different one (PCM warm start, then DMD2 + GAN), so its auxiliary networks, EMA
target and optimizer state start afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf
from torch import Tensor, nn

from distill.errors import CheckpointError, ConfigError
from distill.lit.checkpoint_io import is_sharded_checkpoint, read_checkpoint

CHECKPOINT = Path("checkpoints") / "last.ckpt"
STUDENT_PREFIX = "student."
EMA_PREFIX = "ema.copies."
FIX = "set init_from=<run dir of a finished distill-train run> (or the path of its checkpoints/last.ckpt)"


@dataclass(frozen=True)
class StudentInit:
    """A student's weights read from a checkpoint, with where they came from (for messages and logs)."""

    weights: dict[str, Tensor]
    path: Path
    which: str  # "EMA copy 0" | "raw student"
    step: int | None
    about: str  # "method=pcm, dataset=digits" when the run's config is beside it, else ""

    def describe(self) -> str:
        about = f" ({self.about})" if self.about else ""
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.path}{about}: {self.which}{step}"


def checkpoint_path(source: str | Path) -> Path:
    """``<run dir>/checkpoints/last.ckpt`` for a run dir, ``source`` itself for a file."""
    path = Path(source).expanduser()
    if is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise ConfigError(
                f"init_from={source} has no {CHECKPOINT} (not a distill-train run dir, or the run "
                f"did not finish): {FIX}"
            )
        return path / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"init_from={source} does not exist: {FIX}")
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The Lightning checkpoint's ``state_dict``, loaded without unpickling arbitrary objects."""
    try:
        return read_checkpoint(path)["state_dict"]
    except CheckpointError as err:
        raise ConfigError(f"init_from: {err}: {FIX}") from err


def student_weights(state: dict[str, Tensor], ema: bool) -> tuple[dict[str, Tensor], str]:
    """The last EMA copy (``EMAStack.best``: what the run sampled with) when ``ema`` and kept, else the raw student."""
    copies = sorted({int(k[len(EMA_PREFIX) :].split(".", 1)[0]) for k in state if k.startswith(EMA_PREFIX)})
    prefix, which = (
        (f"{EMA_PREFIX}{copies[-1]}.", f"EMA copy {copies[-1]}") if ema and copies else (STUDENT_PREFIX, "raw student")
    )
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, which


def run_summary(path: Path) -> str:
    """``method=..., dataset=...`` of the run a checkpoint belongs to, when its saved config is there."""
    cfg_path = path.parent.parent / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        return ""
    cfg = OmegaConf.load(cfg_path)
    keys = ("method.name", "dataset.name")
    return ", ".join(f"{k.split('.')[0]}={OmegaConf.select(cfg, k)}" for k in keys if OmegaConf.select(cfg, k))


def read_student_init(source: str | Path, ema: bool = True) -> StudentInit:
    """Resolve ``source`` (run dir or ``.ckpt``) and read the student weights it holds."""
    path = checkpoint_path(source)
    state = read_state_dict(path)
    weights, which = student_weights(state, ema)
    if not weights:
        raise ConfigError(f"init_from: {path} holds no student weights ({STUDENT_PREFIX}* keys): {FIX}")
    step = state.get("step_count")
    return StudentInit(weights, path, which, int(step) if isinstance(step, Tensor) else None, run_summary(path))


def mismatch(expected: dict[str, Tensor], weights: dict[str, Tensor]) -> str:
    """What keeps ``weights`` from loading into a module with state ``expected`` ("" when they fit)."""
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & weights.keys())
        if weights[k].shape != expected[k].shape
    ]
    parts = [
        f"{label} {len(items)} {items[:4]}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape-mismatched (source vs this run)", shapes),
        )
        if items
    ]
    return "; ".join(parts)


def load_student_init(
    student: nn.Module,
    source: str | Path,
    ema: bool = True,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    target: str = "this run",
) -> nn.Module:
    """``prepare(student)`` with the student weights of the run at ``source``.

    The weights go into the plain built student *before* ``prepare`` (a method's re-parameterization,
    e.g. MeanFlow's second time input) whenever they fit it, so that any plain student (PCM, CD, ...)
    can start any method. Only weights that fit the prepared student alone (MeanFlow -> MeanFlow, LoRA -> LoRA)
    are loaded after it. Returns the prepared student; prints where its weights came from.

    Raises:
        ConfigError: ``source`` is missing or unreadable, or its student's architecture differs.
    """
    prepare = prepare or (lambda s: s)
    init = read_student_init(source, ema)
    plain_problem = mismatch(student.state_dict(), init.weights)
    if not plain_problem:
        student.load_state_dict(init.weights)
        prepared = prepare(student)
    else:
        prepared = prepare(student)
        prepared_problem = mismatch(prepared.state_dict(), init.weights)  # prepared in place (LoRA) counts too
        if prepared_problem:
            extra_only = init.weights.keys() > student.state_dict().keys()
            raise ConfigError(architecture_error(init, target, plain_problem, extra_only))
        prepared.load_state_dict(init.weights)
    if rank_zero_only.rank == 0:  # one line per run, not per device
        print(f"init_from: student starts from {init.describe()}")
    return prepared


def architecture_error(init: StudentInit, target: str, problem: str, extra_only: bool) -> str:
    """Name both runs, the keys that differ and the fix."""
    hint = (
        " The source student has extra keys: its method re-parameterized it (e.g. MeanFlow's second time "
        "input), so it can only start a run of that same method; init from the run before it instead."
        if extra_only
        else ""
    )
    about = f" ({init.about})" if init.about else ""
    return (
        f"init_from={init.path}{about} has a student network that does not fit the student of {target}: "
        f"{problem}.{hint} Fix: set init_from to a run whose dataset, teacher and student configs are those "
        f"of {target}, or drop init_from."
    )
