"""Skip training steps whose loss or gradient is not finite; stop when they keep coming.

One NaN step that reached the optimizer would poison the weights, Adam's moments and every EMA
copy for good; skipping it costs one batch. Many in a row mean the run diverged (fp16 DMD2,
sCM and MeanFlow spikes): stop, and say at which step, in which loss term, and where the last
good checkpoint is. Weights that are not finite anyway (a finite step that overflowed) are never
checkpointed: the save fails and the previous checkpoint stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.lit.sharding import full_tensor, local_tensor


def nonfinite_weights(module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters holding a NaN or an infinity (buffers may use NaN as "unset").
    Of a sharded module, those whose shard on this rank does."""
    return [name for name, p in module.named_parameters() if not torch.isfinite(local_tensor(p)).all()]


def nonfinite_terms(terms: dict[str, Tensor]) -> list[str]:
    """Names of the scalar terms (loss terms, grad norms) that are NaN or infinite."""
    return [k for k, v in terms.items() if not math.isfinite(float(v.detach()))]


def grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> Tensor:
    """Global gradient norm, clipping to ``max_norm`` when it is positive (a NaN anywhere makes it NaN)."""
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    # Over sharded (DTensor) gradients the norm is the global one, still spread over the ranks.
    return full_tensor(norm)


@dataclass
class BadStepGuard:
    """Counts skipped steps; ``limit`` in a row ends the run."""

    limit: int = 10
    in_a_row: int = 0
    skipped: int = 0

    def record(self, bad: bool) -> bool:
        """Count one step; True when it was the ``limit``-th bad one in a row."""
        self.in_a_row = self.in_a_row + 1 if bad else 0
        self.skipped += int(bad)
        return bad and self.in_a_row >= self.limit

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_a_row, self.skipped = state["in_a_row"], state["skipped"]


def divergence_message(step: int, in_a_row: int, terms: list[str], checkpoint: str | None) -> str:
    where = (
        f"the last good checkpoint is {checkpoint} (no checkpoint is ever written with non-finite weights): "
        f"resume from it with ckpt_path={checkpoint} and"
        if checkpoint
        else "no checkpoint was written before it diverged: start again with"
    )
    return (
        f"training diverged: {in_a_row} steps in a row had a non-finite {', '.join(terms)} (the last at "
        f"step {step}); {where} a lower method.optimizer.lr, a smaller method.grad_clip or "
        "hardware.precision=32-true (raise train.max_bad_steps to tolerate longer streaks)"
    )
