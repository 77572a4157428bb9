"""Generate with fixed seeds at every NFE, score, and turn the scores into result rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.core.conditioning import GUIDANCE, LABELS, conditioned, table_rows, table_size
from distill.core.grids import make_grid
from distill.core.samplers import SAMPLERS, prior_state, sample_heun, sampler_nfe
from distill.evaluation.noise import sample_seeds, seeded_noise
from distill.evaluation.results import ResultRow
from distill.evaluation.scorer import Scorer


@dataclass
class EvalSpec:
    """What one evaluation generates. Mirrors ``conf/eval``."""

    num_samples: int = 1000
    batch_size: int = 1000
    seed: int = 0
    teacher_samplers: Sequence[str] = ("euler", "heun")
    teacher_nfes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    teacher_grid: str = "cosine"
    student_nfes: Sequence[int] = (1, 2, 4)
    progress: bool = True
    num_classes: int = 0  # class-conditional models: sample i is asked for class seed_i mod num_classes
    prompt_table: Tensor | dict[str, Tensor] | None = None  # text: sample i gets prompt row seed_i mod rows
    guidance: float | None = None  # every sample asked for this guidance scale (guidance-input students)
    decode: Callable[[Tensor], Tensor] | None = None  # latent teachers: latents -> pixels before scoring
    extra: dict = field(default_factory=dict)

    def follow_teacher(self, teacher: nn.Module) -> None:
        """Sample as the teacher is conditioned: balanced classes for a class-conditional teacher, the
        dataset's prompts for a text teacher, and pixels decoded from a latent teacher's samples."""
        self.num_classes = getattr(teacher, "num_classes", 0)
        self.prompt_table = getattr(teacher, "prompt_table", None)
        codec = getattr(teacher, "codec", None)
        self.decode = codec.decode if codec is not None else None


def reachable_steps(sampler: str, nfes: Sequence[int]) -> list[tuple[int, int]]:
    """(steps, actual NFE) for each budget: the most steps whose NFE fits it, duplicates dropped."""
    out: dict[int, int] = {}
    for budget in nfes:
        steps = max((k for k in range(1, budget + 1) if sampler_nfe(sampler, k) <= budget), default=1)
        if steps == 1 and sampler != "euler":
            continue  # a one-step multistep/second-order solver is plain Euler: not a row of its own
        out[sampler_nfe(sampler, steps)] = steps
    return [(steps, nfe) for nfe, steps in sorted(out.items())]


def seed_labels(seeds: Sequence[int], num_classes: int, device: torch.device | str = "cpu") -> Tensor | None:
    """Balanced classes, a pure function of the seed: the same seed asks for the same class."""
    return torch.tensor([s % num_classes for s in seeds], device=device) if num_classes else None


def seed_condition(seeds: Sequence[int], spec: EvalSpec, device: torch.device | str = "cpu"):
    """What each seed is asked for: a prompt (text-conditional), a class (class-conditional), or nothing;
    and ``spec.guidance`` where set, which every network that reads the condition sees (a method's own
    sampling copies too, such as progressive distillation's round snapshots)."""
    if spec.prompt_table is not None:
        rows = torch.tensor([s % table_size(spec.prompt_table) for s in seeds])
        condition = {k: v.to(device) for k, v in table_rows(spec.prompt_table, rows).items()}
    else:
        labels = seed_labels(seeds, spec.num_classes, device)
        condition = {} if labels is None else {LABELS: labels}
    if spec.guidance is not None:
        condition[GUIDANCE] = torch.full((len(seeds),), float(spec.guidance), device=device)
    return condition or None


@torch.no_grad()
def generate(
    sample_fn: Callable[[Tensor, Callable[[int], Tensor]], Tensor],
    shape: Sequence[int],
    spec: EvalSpec,
    device: torch.device | str = "cpu",
    desc: str = "sampling",
) -> Tensor:
    """Run ``sample_fn(noise, renoise)`` over the spec's seeds in batches; returns samples on CPU.

    ``renoise(i)`` gives the batch's fresh noise for stochastic step i, seeded per sample too.
    """
    seeds = sample_seeds(spec.num_samples, spec.seed)
    chunks = range(0, len(seeds), spec.batch_size)
    out = []
    for start in tqdm(chunks, desc=desc, disable=not spec.progress, leave=False):
        batch_seeds = seeds[start : start + spec.batch_size]
        noise = seeded_noise(batch_seeds, shape).to(device)

        def renoise(i: int, batch_seeds=batch_seeds) -> Tensor:
            return seeded_noise(batch_seeds, shape, stream=i + 1).to(device)

        with conditioned(seed_condition(batch_seeds, spec, device)):
            x = sample_fn(noise, renoise)
        out.append((spec.decode(x) if spec.decode is not None else x).float().cpu())
    return torch.cat(out)


def teacher_sample_fn(teacher: nn.Module, sampler: str, steps: int, grid_name: str):
    def run(noise: Tensor, renoise=None) -> Tensor:  # ODE samplers are deterministic
        grid = make_grid(grid_name, steps).to(noise)
        return SAMPLERS[sampler](teacher, prior_state(noise, grid[0]), grid)

    return run


def score_rows(
    scorer: Scorer, samples: Tensor, model: str, sampler: str, nfe: int, spec: EvalSpec, step: int
) -> list[ResultRow]:
    """One row per metric of ``scorer.score_all``: the main metric first, then the collapse metrics
    (and, for class-conditional samples, whether they show the class they were asked for)."""
    labels = seed_labels(sample_seeds(spec.num_samples, spec.seed), spec.num_classes)
    return [
        ResultRow(model, sampler, nfe, metric, value, spec.num_samples, step)
        for metric, value in scorer.score_all(samples, labels).items()
    ]


def evaluate_teacher(
    teacher: nn.Module, shape: Sequence[int], scorer: Scorer, spec: EvalSpec, step: int = 0, device="cpu"
) -> tuple[list[ResultRow], dict[str, Tensor]]:
    """Teacher rows (main and collapse metrics) for every sampler x NFE; also returns the samples,
    keyed ``sampler@nfe``."""
    rows, samples = [], {}
    for sampler in spec.teacher_samplers:
        for steps, nfe in reachable_steps(sampler, spec.teacher_nfes):
            x = generate(
                teacher_sample_fn(teacher, sampler, steps, spec.teacher_grid),
                shape,
                spec,
                device,
                desc=f"teacher {sampler} nfe={nfe}",
            )
            samples[f"{sampler}@{nfe}"] = x
            rows += score_rows(scorer, x, "teacher", sampler, nfe, spec, step)
    return rows, samples


def evaluate_student(
    method, student: nn.Module, shape: Sequence[int], scorer: Scorer, spec: EvalSpec, step: int, device="cpu"
) -> tuple[list[ResultRow], dict[str, Tensor]]:
    """Student rows (main and collapse metrics) at every NFE the method supports, sampled with the
    method's own sampler."""
    rows, samples = [], {}
    for nfe in method.supported_nfes(spec.student_nfes):
        x = generate(
            lambda z, renoise, n=nfe: method.sample(student, z, n, renoise),
            shape,
            spec,
            device,
            desc=f"student nfe={nfe}",
        )
        samples[f"{method.name}@{nfe}"] = x
        rows += score_rows(scorer, x, "student", method.name, nfe, spec, step)
    return rows, samples


FLOW_MAP_METRIC = "flow_map_mse"


def teacher_ode_endpoints(
    teacher: nn.Module, shape: Sequence[int], spec: EvalSpec, steps: int = 128, device="cpu"
) -> Tensor:
    """Where the teacher's ODE carries each evaluation noise (fine Heun from s = 1): the exact flow map
    for an analytic teacher, the reference every one-step student is trying to learn."""
    grid = make_grid("cosine", steps)
    return generate(lambda z, renoise: sample_heun(teacher, z, grid.to(z)), shape, spec, device, desc="teacher ODE")


def evaluate_flow_map(
    method, student: nn.Module, endpoints: Tensor, shape: Sequence[int], spec: EvalSpec, step: int, device="cpu"
) -> ResultRow:
    """Mean squared distance (summed over dims) of the student's 1-NFE samples to the teacher's ODE endpoints."""
    x = generate(lambda z, renoise: method.sample(student, z, 1, renoise), shape, spec, device, desc="student flow map")
    error = (x.double() - endpoints.double()).pow(2).flatten(1).sum(1).mean().item()
    return ResultRow("student", method.name, 1, FLOW_MAP_METRIC, error, spec.num_samples, step)
