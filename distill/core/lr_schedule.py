"""Learning-rate warm-up and decay as a pure function of the training step (``train.lr_*``).

``DistillModule`` multiplies every optimizer's base lr by ``lr_factor(step)`` and by the method's own
``lr_scale`` (PD's per-round decay, DMD2's fake-score ratio). ``step`` is ``DistillModule.step_count``:
training batches (iterations) done, the same for every optimizer of a multi-optimizer method, as
the officials count it (DMD2 steps both of its schedulers every iteration, ``main/edm/train_edm.py:265,288``,
whether or not the generator stepped), and checkpointed, so a resumed run continues its schedule.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "inverse_sqrt", "linear_decay")


def lr_factor(step: int, schedule: str = "constant", warmup_steps: int = 0, decay_steps: int | None = None) -> float:
    """The lr multiplier at ``step`` (0-based: the first batch trains at step 0).

    Warm-up is linear from 0: ``min(step / warmup_steps, 1)``, as EDM2's ``rampup`` and FastGen's
    schedulers (which start at 0 or at 1e-8 / lr, e.g. py-meanflow ``train.py:165``); the decay multiplies it:

    - ``constant``: 1.
    - ``inverse_sqrt``: ``1 / sqrt(max(step / decay_steps, 1))``: flat until ``decay_steps``, then
      inverse square root (NVlabs/edm2 ``training/training_loop.py:47-53``, in images there;
      NVlabs/FastGen ``fastgen/utils/lr_scheduler.py:128-153``, in iterations, used by sCD ImageNet-64
      with ``decay_steps=35000``, ``configs/experiments/EDM/config_scd_in64.py:32-35``).
    - ``linear_decay``: 1 at the end of warm-up, falling linearly to 0 at ``decay_steps`` and staying there
      (FastGen ``LambdaLinearScheduler`` with ``f_min=0``, ``lr_scheduler.py:88-125``).

    Args:
        step: training batches done.
        schedule: one of ``LR_SCHEDULES``.
        warmup_steps: steps of linear warm-up (0: none).
        decay_steps: ``inverse_sqrt``'s reference step, or the step where ``linear_decay`` reaches 0;
            unused by ``constant``.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r} is unknown; choose one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"lr warm-up of {warmup_steps} steps must be >= 0")
    if schedule != "constant" and (decay_steps is None or decay_steps < 1):
        raise ValueError(f"lr schedule {schedule} needs decay_steps >= 1, not {decay_steps}")
    factor = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    if schedule == "inverse_sqrt":
        factor /= math.sqrt(max(step / decay_steps, 1.0))
    elif schedule == "linear_decay":
        if decay_steps <= warmup_steps:
            raise ValueError(f"linear_decay's decay_steps ({decay_steps}) must exceed its warm-up ({warmup_steps})")
        factor *= min(max(1.0 - (step - warmup_steps) / (decay_steps - warmup_steps), 0.0), 1.0)
    return factor
