"""Students that take the classifier-free guidance scale w as an input (docs/methods.md 13).

A guided teacher's velocity ``v_null + w (v_cond - v_null)`` is a different field at every w; a
student distilled at one w serves that w only. Given w as an input (improved MeanFlow, Geng et al.
2025, feeds ``1 - 1/w`` to its network; FLUX.1-dev embeds its guidance beside the time), and trained
on scales drawn per sample with the teacher guiding each sample at its own w, one student serves a
range of w, with one network call per step (no second, unconditional call at sampling time).

The student's net is rebuilt with ``guidance_embed=True`` and its weights loaded: the embedding's
last layer is zero, so a teacher copy starts as the teacher's conditional velocity at every w.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from distill.core.errors import ConfigError
from distill.nets.factory import rebuild_with
from distill.nets.velocity import VelocityModel

# The method configs whose objective says ``guidance_input`` (tests/students/test_guidance_input.py
# keeps this list equal to what conf/method/ builds): students that learn guided teacher velocities alone.
GUIDANCE_INPUT_METHODS = ("arcflow", "consistency", "meanflow", "pcm", "progressive", "scd")
GUIDANCE_PARAMETERS = "*guidance_embed*"  # fnmatch pattern of the new parameters (LoRA trains them fully)


def check_guidance_range(guidance_range: object) -> tuple[float, float] | None:
    """``student.guidance_range`` as ``(low, high)`` with ``0 < low <= high``, or None (off)."""
    if guidance_range is None:
        return None
    try:
        low, high = (float(w) for w in guidance_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0 < low <= high:
        raise ConfigError(
            f"student.guidance_range={guidance_range!r} must be [low, high] with 0 < low <= high "
            "(e.g. [1, 4]: guidance scales drawn log-uniformly from 1 to 4), or null"
        )
    return low, high


def check_guidance_lr_scale(scale: object) -> float:
    """``student.guidance_lr_scale`` as a positive float."""
    try:
        value = float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise ConfigError(
            f"student.guidance_lr_scale={scale!r} must be a number > 0 (the guidance embedding's lr / the "
            "student's; 1: the same lr)"
        )
    return value


def guidance_groups(params: list[nn.Parameter] | list[dict], student: nn.Module) -> list[dict]:
    """Optimizer groups with the guidance embedding's parameters apart, marked ``"guidance": True``
    (each group split in two, its options kept), so that their lr can be raised: a zero-initialised
    embedding learns at Adam's rate of about lr per step, far too slowly for a short distillation.

    Args:
        params: what ``Method.trainable_parameters`` gives: parameters, or optimizer groups.
        student: the module whose named parameters tell which ones are the guidance embedding's.
    """
    guidance = {id(p) for name, p in student.named_parameters() if fnmatch(name, GUIDANCE_PARAMETERS)}
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    split = []
    for group in groups:
        members = list(group["params"])
        rest = [p for p in members if id(p) not in guidance]
        split += [{**group, "params": rest}] if rest else []
        embedding = [p for p in members if id(p) in guidance]
        split += [{**group, "params": embedding, "guidance": True}] if embedding else []
    return split


def raise_guidance_lr(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Multiply the lr of ``optimizer``'s groups that ``guidance_groups`` marked by ``scale``."""
    for group in optimizer.param_groups:
        if group.get("guidance"):
            group["lr"] *= scale


def with_guidance_input(student: nn.Module, default_guidance: float) -> nn.Module:
    """``student`` (a ``VelocityModel`` of one of our nets) with a guidance input, weights kept.

    Args:
        default_guidance: the w of calls that pass none (evaluation at the teacher's ``guidance``).

    Raises:
        ConfigError: the student's network cannot take a guidance input.
    """
    net = getattr(student, "net", None)
    if not isinstance(student, VelocityModel):
        raise ConfigError(f"student.guidance_range needs a velocity-model student, not a {type(student).__name__}")
    if getattr(net, "guidance_embed", None) is not None:
        return student
    try:
        wide = rebuild_with(net, "a guidance input", guidance_embed=True, default_guidance=default_guidance)
    except TypeError as err:
        raise ConfigError(f"student.guidance_range: {err} (a student.net of type mlp or unet can take one)") from err
    wide = wide.to(next(net.parameters()))
    result = wide.load_state_dict(net.state_dict(), strict=False)
    new_keys = set(wide.state_dict()) - set(net.state_dict())
    if result.unexpected_keys or set(result.missing_keys) - new_keys:
        raise ValueError(f"the student's weights do not fit its net with a guidance input: {result}")
    student.net = wide.train(net.training).requires_grad_(True)
    return student


def no_guidance_input(guidance: float) -> ConfigError:
    """The error of ``guidance=`` asked of a student without a guidance input."""
    return ConfigError(
        f"guidance={guidance}: this run's student has no guidance input (it samples at the teacher.guidance "
        "it was trained with); train one with student.guidance_range=[low,high], or drop guidance="
    )


def takes_guidance(student: nn.Module) -> bool:
    """Whether ``student`` (any wrapper of it) has a guidance-scale input."""
    return any(getattr(m, "guidance_embed", None) is not None for m in student.modules())
