"""Training checkpoints that survive crashes.

Written to a temporary file, flushed to disk and renamed over the old one, so a crash mid-write
leaves the previous checkpoint whole; read with ``weights_only=True`` (nothing is unpickled), and
a truncated or foreign file is named as such. (Non-finite weights are refused earlier, by
``DistillModule.on_save_checkpoint``: only the module knows which tensors are weights.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.core.io import atomic_write
from distill.errors import CheckpointError


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically: a crash leaves the previous file there whole."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint

    atomic_write(path, write)


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: it is truncated, corrupt, not a torch file, or holds no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickles: all mean "not our checkpoint"
        # torch's own message suggests weights_only=False, which we never do: name only the error's kind.
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: truncated, corrupt or not a torch file)"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} holds no 'state_dict' (not a distill-train checkpoint)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with ``write_checkpoint`` and ``read_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location if map_location is not None else "cpu")
