"""Objectives as weighted loss terms on one student (design.md: rCM = sCM + lambda DMD).

Each term is a complete method with its own auxiliary networks and optimizers. The composite
steps the union of their optimizers; in a phase, every term that owns that optimizer contributes
``weight * its loss``. One term decides when each optimizer steps (``schedule``, e.g. DMD's two
time scales) and one term samples (``sampler``, e.g. sCM's multistep consistency sampler).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.methods.base import Method, Renoise, SamplingPlan


class WeightedSum(Method):
    """Args:
    terms: name -> method (Hydra instantiates each from its own ``_target_``).
    weights: name -> weight of that term's loss (missing names weigh 1).
    sampler: the term whose sampler and NFEs are the composite's.
    schedule: the term whose ``phases(step)`` the composite follows; None: every optimizer every step.
    name: the sampler name on result rows.
    """

    def __init__(
        self,
        terms: Mapping[str, Method],
        weights: Mapping[str, float] | None = None,
        sampler: str | None = None,
        schedule: str | None = None,
        name: str = "composite",
    ):
        super().__init__()
        if not terms:
            raise ValueError("method.terms is empty: a weighted sum needs at least one term")
        self.terms = nn.ModuleDict(dict(terms))
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms)) + sorted({sampler, schedule} - set(self.terms) - {None})
        if unknown:
            raise ValueError(f"method.weights/sampler/schedule name {unknown}, not among the terms {list(self.terms)}")
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.terms}
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

    # --- plumbing: forwarded to every term ---------------------------------------------------
    def set_budget(self, max_steps: int) -> None:
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
            term.prepare_to_load({k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)},
                                 student)

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        seen: set[int] = set()
        for _, term in self._owners(optimizer):
            for p in term.trainable_parameters(optimizer, student):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def phases(self, step: int) -> Sequence[str]:
        return self.terms[self.schedule].phases(step) if self.schedule else self.optimizer_names

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
        for key, term in self._owners(phase):
            terms = term.loss(phase, x0, teacher, student, step)
            weighted = self.weights[key] * terms["loss"]
            total = weighted if total is None else total + weighted
            logs.update({f"{key}_{k}": v.detach() if isinstance(v, Tensor) else torch.tensor(v) for k, v in terms.items()})
        return {"loss": total, **logs}

    # --- sampling: the sampler term's ----------------------------------------------------------
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        return self.terms[self.sampler].sample(student, noise, nfe, renoise)

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan | None:
        return self.terms[self.sampler].sampling_plan(student, nfe)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return self.terms[self.sampler].supported_nfes(nfes)
