"""Speed and memory switches for a network, each leaving its parameter names and its maths unchanged.

- ``compile_forward``: ``torch.compile`` of the forward, installed as a bound method of the module
  itself, so a deep copy (EMA, targets, snapshots) calls the compiled code with *its own* weights.
  (``nn.Module.compile`` and ``torch.compile(module)`` store a closure over the original: a copy
  would keep running the original's weights, and the latter also renames every state-dict key.)
- ``checkpoint_blocks``: activation checkpointing of every outermost repeated block (the elements
  of ``nn.ModuleList``s: UNet down/up blocks, MLP residual blocks, transformer layers): a block
  keeps only its inputs for backward and recomputes the rest, one extra forward for most of the
  activation memory.
- ``to_channels_last``: 4-D weights in NHWC, which convolutions on tensor cores prefer.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch._C._functorch import peek_interpreter_stack
from torch.utils.checkpoint import checkpoint


def compile_forward(module: nn.Module, **options: Any) -> nn.Module:
    """Compile ``module``'s class forward and bind it to ``module`` (in place; returns it)."""
    module.forward = types.MethodType(torch.compile(type(module).forward, **options), module)
    return module


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # No grad (targets, sampling): nothing to save. Inside torch.func.jvp (exact JVPs of sCM and
    # MeanFlow) the recomputation would not replay the forward-mode pass: run those calls plainly.
    if not torch.is_grad_enabled() or peek_interpreter_stack() is not None:
        return type(self).forward(self, *args, **kwargs)
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The elements of ``module``'s outermost ``nn.ModuleList``s (blocks nested in a block are not listed)."""
    found: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            found.extend(block for block in child if block is not None)  # diffusers leaves None slots
        else:
            found.extend(repeated_blocks(child))
    return found


def checkpoint_blocks(module: nn.Module) -> list[nn.Module]:
    """Activation-checkpoint each of ``repeated_blocks(module)`` (in place); returns them."""
    blocks = repeated_blocks(module)
    for block in blocks:
        block.forward = types.MethodType(_checkpointed_forward, block)
    return blocks


def to_channels_last(module: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer of ``module`` in channels-last memory format (in place)."""
    return module.to(memory_format=torch.channels_last)
