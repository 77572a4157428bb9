"""Global batch semantics: how one optimizer step's batch is split over devices, nodes and micro-batches.

An experiment states what the paper states: the global batch (samples per optimizer step, all
ranks together) and the training length in images. The hardware decides the rest, derived here
once and asserted as EDM does: ``global = micro_batch x accumulation x world_size``, so a run on
one GPU and on 64 takes the same optimizer steps on the same number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # samples per optimizer step, all ranks together
    device_batch: int  # samples per step on one rank: the loader's batch (train.batch_size)
    micro_batch: int  # samples per forward/backward on one rank
    accumulation: int  # micro-batches per step, their gradients summed before the step
    steps: int  # optimizer steps (training batches) of the run


def _multiples(n: int, of: int) -> str:
    below = (n // of) * of
    return f"{below} or {below + of}" if below else f"{of}"


def plan_batches(
    global_batch: int, world_size: int, steps: int, images: int | None = None, max_device_batch: int | None = None
) -> BatchPlan:
    """Per-device batch, gradient accumulation and step count for a global batch on ``world_size`` ranks.

    Args:
        global_batch: samples per optimizer step over all ranks (``train.global_batch_size``).
        world_size: devices per node x nodes.
        steps: training length in steps, used when ``images`` is None (``train.max_steps``).
        images: training length in images (``train.images``); must be a multiple of the global batch.
        max_device_batch: the most samples one device holds in one forward/backward
            (``train.max_device_batch``); a larger per-device batch runs as equal micro-batches.

    Raises:
        ConfigError: a split that does not divide, naming the key to change and values that work.
    """
    if global_batch < 1 or world_size < 1:
        raise ConfigError(f"the global batch ({global_batch}) and the device count ({world_size}) must be positive")
    if global_batch % world_size:
        raise ConfigError(
            f"train.global_batch_size={global_batch} does not split over {world_size} devices: "
            f"use a multiple of {world_size} ({_multiples(global_batch, world_size)})"
        )
    device_batch = global_batch // world_size
    micro_batch = device_batch if max_device_batch is None else min(device_batch, max_device_batch)
    if device_batch % micro_batch:
        raise ConfigError(
            f"the per-device batch {device_batch} (global {global_batch} / {world_size} devices) does not "
            f"split into micro-batches of train.max_device_batch={max_device_batch}: use a divisor of "
            f"{device_batch}, or a global batch that is a multiple of {world_size * micro_batch}"
        )
    if images is not None:
        if images < global_batch or images % global_batch:
            raise ConfigError(
                f"train.images={images} is not a whole number of steps of the global batch "
                f"{global_batch}: use a multiple of it ({_multiples(images, global_batch)})"
            )
        steps = images // global_batch
    return BatchPlan(global_batch, device_batch, micro_batch, device_batch // micro_batch, steps)
