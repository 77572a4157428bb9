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
    drawn alone (FastGen forks the RNG around its first-stage call). Both always run, on every row:
    under FSDP every rank must make the same network calls whatever its rows' times (FastGen
    synchronises its stage masks over the ranks for this), and TCM's batches hold rows of both
    stages anyway.
    """

    def velocity(x: Tensor, s: Tensor) -> Tensor:
        rng = capture_rng(x.device)
        below = early(x, s)
        restore_rng(rng, x.device)
        return torch.where(append_dims(s >= transition, x.ndim), late(x, s), below)

    return velocity
