"""The hardware config's speed and memory switches, applied in every training process.

``hardware.channels_last`` (every network), ``hardware.activation_checkpointing`` (the student's
repeated blocks) and ``hardware.compile`` (the student's forward) are applied at ``setup``: after
a spawning strategy has started its processes (a compiled forward cannot be pickled to them) and
before the strategy wraps the module and moves it to its device.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from distill.nets.acceleration import checkpoint_blocks, compile_forward, to_channels_last


class Speedups(L.Callback):
    """Args:
    compile: ``torch.compile`` the student's forward (``compile_options`` go to ``torch.compile``).
    activation_checkpointing: recompute the student's blocks in backward instead of storing them.
    channels_last: NHWC weights for every network of the module (teacher, student, auxiliaries).
    """

    def __init__(
        self,
        compile: bool = False,
        activation_checkpointing: bool = False,
        channels_last: bool = False,
        compile_options: dict[str, Any] | None = None,
    ):
        self.compile, self.activation_checkpointing, self.channels_last = (
            compile,
            activation_checkpointing,
            channels_last,
        )
        self.compile_options = dict(compile_options or {})
        self._applied: set[int] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if id(pl_module) in self._applied:  # a second fit of the same module
            return
        self._applied.add(id(pl_module))
        if self.channels_last:
            to_channels_last(pl_module)
        if self.activation_checkpointing:
            checkpoint_blocks(pl_module.student)
        if self.compile:
            compile_forward(pl_module.student, **self.compile_options)
