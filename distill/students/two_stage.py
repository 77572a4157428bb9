"""A two-stage consistency model: one network below a transition time, another at and above it.

Truncated consistency training (TCM, docs/methods.md 3.7) trains only the second stage; its targets
below the transition come from the frozen first-stage model. FastGen's ``TCMPrecond``
(``fastgen/methods/consistency_model/TCM.py``) is this selection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.core.prediction import VelocityFn
from distill.core.rng import capture_rng, restore_rng
from distill.core.tensors import append_dims


def two_stage(early: VelocityFn, late: VelocityFn, transition: float) -> VelocityFn:
    """The velocity of ``early`` at FM times ``s < transition`` and of ``late`` at ``s >= transition``.

    Both run from the same RNG state, so a network with dropout draws the masks either would have
    drawn alone, and ``early`` leaves the RNG as it found it (FastGen forks the RNG around its
    first-stage call). Where every row is at or above the transition, only ``late`` runs.
    """

    def velocity(x: Tensor, s: Tensor) -> Tensor:
        late_rows = s >= transition
        if bool(late_rows.all()):
            return late(x, s)
        rng = capture_rng(x.device)
        out = early(x, s)
        restore_rng(rng, x.device)
        if bool(late_rows.any()):
            out = torch.where(append_dims(late_rows, x.ndim), late(x, s), out)
        return out

    return velocity
