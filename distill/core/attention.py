"""Which attention kernel runs when a loss needs more than one plain backward pass.

PyTorch's flash and memory-efficient SDPA kernels have neither forward-mode AD (sCM's and
MeanFlow's JVP) nor a derivative of their backward (R1's gradient penalty). The math kernel has
both; the kernel is picked at forward time, so the forward itself must run inside this context.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel


def twice_differentiable_attention() -> AbstractContextManager:
    """Attention pinned to the math kernel: JVPs and double backward work through it."""
    return sdpa_kernel(SDPBackend.MATH)
