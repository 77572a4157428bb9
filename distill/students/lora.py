"""LoRA students for any method (peft): the body frozen, low-rank adapters on chosen layers.

``add_lora`` injects peft LoRA layers into the modules named by ``targets`` and freezes the rest,
except parameters matching ``train_fully`` (heads a method added, e.g. ArcFlow's momentum heads, or
MeanFlow's new time embedding). ``share_frozen_weights`` then points every frozen weight that is
still equal to the teacher's at the teacher's own tensor, so a LoRA student costs the teacher's
memory once plus its adapters. EDM's own Linear / Conv2d layers (and EDM2's MPConv) take LoRA
through ``distill.students.weight_lora``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from distill.students.weight_lora import WEIGHT_LORA_LAYERS, WeightLoraError

ADAPTABLE = (nn.Linear, nn.Conv2d, *WEIGHT_LORA_LAYERS)  # layer types a LoRA target may name
BASE_LAYER = ".base_layer"


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: str | Sequence[str],
    dropout: float = 0.0,
    train_fully: Sequence[str] = (),
) -> nn.Module:
    """In place: LoRA adapters on ``targets`` (a regex over module names, or a list of name suffixes,
    peft's rule), everything else frozen except parameters matching the fnmatch patterns ``train_fully``."""
    if rank < 1:
        raise ValueError(f"student.lora.rank={rank} must be >= 1")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    config._register_custom_module(WEIGHT_LORA_LAYERS)  # peft's hook for layer types it does not know
    try:
        inject_adapter_in_model(config, model)
    except WeightLoraError:
        raise
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        names = [name for name, m in model.named_modules() if isinstance(m, ADAPTABLE)]
        raise ValueError(
            f"student.lora.targets={targets!r} matched no layer ({err}); "
            f"Linear/Conv2d layers here: {names[:12]}{' ...' if len(names) > 12 else ''}"
        ) from err
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in train_fully):
            p.requires_grad_(True)
    return model


def lora_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters() if ".lora_" in name]


def share_frozen_weights(student: nn.Module, teacher: nn.Module) -> int:
    """Make each frozen student parameter equal to a teacher parameter *be* that parameter.

    Student names match teacher names up to peft's ``.base_layer`` and any wrapper prefix (an
    ArcFlow student holds the teacher copy as ``model``). Returns the number of elements shared.
    """
    by_name = dict(teacher.named_parameters())
    shared = 0
    for name, p in list(student.named_parameters()):
        if p.requires_grad:
            continue
        plain = name.replace(BASE_LAYER, "")
        match = next((by_name[t] for t in _suffixes(plain) if t in by_name), None)
        if match is None or match.shape != p.shape or match.device != p.device or not torch.equal(match, p):
            continue
        owner_name, _, attr = name.rpartition(".")
        setattr(student.get_submodule(owner_name), attr, match)
        shared += p.numel()
    return shared


def _suffixes(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, b.c, c]``: the names a wrapped copy's parameter may have in the original."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]
