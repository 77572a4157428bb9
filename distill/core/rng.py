"""Capture and restore the RNG state, so that two forwards of one network draw the same dropout masks.

Consistency losses compare two forwards of the same weights (a no-grad target and the gradient
branch); different dropout masks in the two would bias the target (methods.md 3.5, 4.2 pitfalls).
"""

from __future__ import annotations

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
