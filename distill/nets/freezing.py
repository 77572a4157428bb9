"""Which of a network's parameters stay frozen (GDD-I, docs/methods.md 7), as plain name sets, and frozen copies.

GDD-I fine-tunes a teacher into a one-step generator while its convolutions stay exactly as
pretrained: the claim is that the teacher's layers already hold the generator, and only norms,
embeddings and attention need to move.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from distill.core.errors import ConfigError
from distill.nets.edm2 import MPConv
from distill.nets.edm_layers import Conv2d as EDMConv2d

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
RULES = ("none", "conv", "gdd")


def frozen_parameter_names(model: nn.Module, rule: str | Sequence[str]) -> set[str]:
    """Names of the parameters ``rule`` freezes.

    Args:
        rule: ``none``; ``conv`` (every convolution's weight and bias); ``gdd`` (the GDD code's
            rule for the parameters its optimizer never steps, Zyriix/GDD training/training_loop.py:163-167:
            the name holds "block", "up", "down" or "in", and "conv" or "proj"); or a list of fnmatch
            patterns over parameter names, e.g. ``["*down_blocks*conv*"]``.
    """
    names = [name for name, _ in model.named_parameters()]
    if isinstance(rule, str):
        if rule == "none":
            return set()
        if rule == "conv":
            return {
                f"{module_name}.{p}".lstrip(".")
                for module_name, module in model.named_modules()
                if is_convolution(module)
                for p, _ in module.named_parameters(recurse=False)
            }
        if rule == "gdd":
            # loss.py:225 only stops gradients for "block"/"in" names; training_loop.py:166 also leaves
            # the "up"/"down" ones (every resampling block's conv0/conv1) out of the optimizer.
            return {
                n for n in names if any(k in n for k in ("block", "up", "down", "in")) and ("conv" in n or "proj" in n)
            }
        raise ConfigError(f"method.objective.frozen_layers={rule!r}; choose one of {RULES} or a list of name patterns")
    return {n for n in names if any(fnmatch.fnmatchcase(n, pattern) for pattern in rule)}


def is_convolution(module: nn.Module) -> bool:
    """torch's convolutions, and EDM's / EDM2's own (an EDM2 ``MPConv`` with a 2-D weight is a linear layer)."""
    if isinstance(module, CONV_TYPES):
        return True
    weight = getattr(module, "weight", None) if isinstance(module, (EDMConv2d, MPConv)) else None
    return weight is not None and weight.ndim == 4  # EDM's kernel=0 Conv2d only resamples: no weight


def freeze_(model: nn.Module, names: set[str]) -> None:
    """In place: ``requires_grad=False`` for the named parameters (optimizers then never see them)."""
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)


def trainable_fraction(model: nn.Module) -> float:
    """Share of the parameter count that still trains."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / max(total, 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Inside: ``module``'s parameters take no gradient (gradients still flow through it to its
    inputs); afterwards each parameter's ``requires_grad`` is what it was."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Inside: ``module`` in eval mode (no dropout); afterwards back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# Set on a network sharded by FSDP (``distill.lit.sharding``), which cannot be deep-copied: its copier.
SHARDED_COPY = "_sharded_copy"


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode that takes no gradient: targets, snapshots and EMA copies (of a sharded
    network, a copy sharded the same way)."""
    copier = getattr(model, SHARDED_COPY, None)
    return (copier() if copier else copy.deepcopy(model)).eval().requires_grad_(False)
