"""Objectives as weighted loss terms on one student (docs/methods.md §4.6: rCM = sCM + lambda DMD).

Each term is a complete method with its own auxiliary networks and optimizers. The composite
steps the union of their optimizers; in a phase, every term that owns that optimizer contributes
``weight * its loss``. One term decides when each optimizer steps (``schedule``, e.g. DMD's two
time scales) and one term samples (``sampler``, e.g. sCM's multistep consistency sampler).
A warm-up can train some terms alone first (rCM: sCM alone while its tangent warms up, then DMD
and its two time scales join).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.methods.base import FALLBACK_BUDGET, Method, Renoise, SamplingPlan


class WeightedSum(Method):
    """Args:
    terms: name -> method (Hydra instantiates each from its own ``_target_``).
    weights: name -> weight of that term's loss (missing names weigh 1).
    sampler: the term whose sampler and NFEs are the composite's.
    schedule: the term whose ``phases(step)`` the composite follows; None: every optimizer every step.
    name: the sampler name on result rows.
    warmup: steps (>= 1) or a fraction of the run's budget (< 1) during which only
        ``warmup_terms`` train, their optimizers every step; afterwards every term trains, on
        ``schedule``'s phases counted from the warm-up's end. rCM: sCM alone for its
        ``tangent_warmup`` iterations, then sCM + DMD, the student every 5th
        (``t2v_model_distill_rcm.py:294-299`` ``is_student_phase``, ``:709`` ``emit_dmd``). 0: none.
    warmup_terms: the terms that train during the warm-up.
    """

    def __init__(
        self,
        terms: Mapping[str, Method],
        weights: Mapping[str, float] | None = None,
        sampler: str | None = None,
        schedule: str | None = None,
        name: str = "composite",
        warmup: float = 0,
        warmup_terms: Sequence[str] = (),
    ):
        super().__init__()
        if not terms:
            raise ConfigError("method.objective.terms is empty: a weighted sum needs at least one term")
        self.terms = nn.ModuleDict(dict(terms))
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms)) + sorted({sampler, schedule} - set(self.terms) - {None})
        if unknown:
            raise ConfigError(
                f"method.objective.weights/sampler/schedule name {unknown}, not among the terms {list(self.terms)}"
            )
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.terms}
        if warmup < 0:
            raise ConfigError(
                f"method.objective.warmup={warmup} must be >= 0 (steps, or a fraction of the budget below 1)"
            )
        self.warmup_terms = tuple(warmup_terms)
        if sorted(set(self.warmup_terms) - set(self.terms)):
            raise ConfigError(
                f"method.objective.warmup_terms {sorted(set(self.warmup_terms) - set(self.terms))} are not among "
                f"the terms {list(self.terms)}"
            )
        if warmup > 0 and not self.warmup_terms:
            raise ConfigError(
                f"method.objective.warmup={warmup} needs method.objective.warmup_terms: the terms that train during it"
            )
        self.warmup = warmup
        self.warmup_steps = int(warmup) if warmup >= 1 or warmup == 0 else None  # a fraction waits for set_budget
        self.sampler = sampler or next(iter(self.terms))
        self.schedule = schedule
        self.name = name
        names: list[str] = []
        for term in self.terms.values():
            names += [n for n in term.optimizer_names if n not in names]
        self.optimizer_names = tuple(names)
        roles = [term.data_role for term in self.terms.values()]
        self.data_role = next((r for r in ("real", "marginal") if r in roles), "shape")  # the most demanding

    def _owners(self, optimizer: str) -> list[tuple[str, Method]]:
        return [(k, t) for k, t in self.terms.items() if optimizer in t.optimizer_names]

    def _warmup_length(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else round(self.warmup * FALLBACK_BUDGET)

    # --- plumbing: forwarded to every term ---------------------------------------------------
    def set_budget(self, max_steps: int) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = max(1, round(self.warmup * max_steps))
        for term in self.terms.values():
            term.set_budget(max_steps)

    def set_batch(self, global_batch: int) -> None:
        for term in self.terms.values():
            term.set_batch(global_batch)

    def prepare_student(self, student: nn.Module) -> nn.Module:
        for term in self.terms.values():
            student = term.prepare_student(student)
        return student

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        for term in self.terms.values():
            term.attach(teacher, student)

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        for key, term in self.terms.items():
            prefix = f"terms.{key}."
            term.prepare_to_load(
                {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}, student
            )

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        seen: set[int] = set()
        for _, term in self._owners(optimizer):
            for p in term.trainable_parameters(optimizer, student):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def phases(self, step: int) -> Sequence[str]:
        if step < self._warmup_length():
            names: list[str] = []
            for key in self.warmup_terms:
                names += [n for n in self.terms[key].optimizer_names if n not in names]
            return tuple(names)
        after = step - self._warmup_length()
        return self.terms[self.schedule].phases(after) if self.schedule else self.optimizer_names

    def lr_scale(self, optimizer: str, step: int) -> float:
        return self._owners(optimizer)[0][1].lr_scale(optimizer, step)

    def on_step_end(self, step: int, student: nn.Module) -> list[str]:
        resets: list[str] = []
        for term in self.terms.values():
            resets += [n for n in term.on_step_end(step, student) if n not in resets]
        return resets

    # --- the objective ----------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        warming_up = step < self._warmup_length()
        for key, term in self._owners(phase):
            if warming_up and key not in self.warmup_terms:
                continue
            terms = term.loss(phase, x0, teacher, student, step)
            weighted = self.weights[key] * terms["loss"]
            total = weighted if total is None else total + weighted
            logs.update(
                {f"{key}_{k}": v.detach() if isinstance(v, Tensor) else torch.tensor(v) for k, v in terms.items()}
            )
        return {"loss": total, **logs}

    # --- sampling: the sampler term's ----------------------------------------------------------
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        return self.terms[self.sampler].sample(student, noise, nfe, renoise)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan | None:
        return self.terms[self.sampler].sampling_plan(student, nfe)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return self.terms[self.sampler].supported_nfes(nfes)
