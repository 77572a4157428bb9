"""Capture and restore RNG state.

``capture_rng``/``restore_rng``: two forwards of one network draw the same dropout masks.
Consistency losses compare two forwards of the same weights (a no-grad target and the gradient
branch); different dropout masks in the two would bias the target (docs/methods.md 3.5, 4.2 pitfalls).

``process_rng_state``/``set_process_rng_state``: every generator a training step may draw from
(torch CPU, every CUDA device, numpy, Python), as checkpointable tensors and plain lists, so a
resumed run draws the noise an uninterrupted one would have.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

RNGState = tuple[torch.Tensor, torch.Tensor | None]


def capture_rng(device: torch.device | str) -> RNGState:
    """The CPU generator's state and, on CUDA, ``device``'s generator state."""
    device = torch.device(device)
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def restore_rng(state: RNGState, device: torch.device | str) -> None:
    """Rewind the generators to ``state`` (from ``capture_rng`` on the same device)."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, torch.device(device))


def process_rng_state() -> dict[str, Any]:
    """This process's generators, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "words": list(words), "gauss_next": gauss_next},
    }


def set_process_rng_state(state: dict[str, Any]) -> None:
    """Rewind every generator to ``state`` (from ``process_rng_state``)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss_next"]))
