"""Training checkpoints that survive crashes.

Written to a temporary file, flushed to disk and renamed over the old one, so a crash mid-write
leaves the previous checkpoint whole; read with ``weights_only=True`` (nothing is unpickled), and
a truncated or foreign file is named as such. An FSDP run's checkpoint is a folder of per-rank
shards (``distill.lit.sharding`` writes it the same way: into a staging folder, renamed when whole);
``read_checkpoint`` gathers it into one process and ``consolidate`` turns it into a file.
(Non-finite weights are refused earlier, by ``DistillModule.on_save_checkpoint``: only the module
knows which tensors are weights.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.core.io import atomic_write
from distill.errors import CheckpointError

SHARDED_META = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically: a crash leaves the previous file there whole."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint

    atomic_write(path, write)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an FSDP run's checkpoint: a folder of per-rank shards (torch distributed
    checkpoint) and ``meta.pt``, the rest of Lightning's checkpoint (steps, callbacks, RNG states)."""
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file()


def read_checkpoint(path: str | Path, map_location: Any = "cpu", weights: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint (a file, or a sharded checkpoint's folder gathered into one process),
    loaded without unpickling arbitrary objects. ``weights=False`` reads only a sharded checkpoint's
    ``meta.pt`` (what a resume decision needs) and returns it with an empty ``state_dict``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: it is truncated, corrupt, not a torch file, or holds no ``state_dict``.
    """
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path} is a folder without {SHARDED_META} (not a sharded distill-train checkpoint)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.is_dir():
            ckpt = read_sharded(path) if weights else {**_load(path / SHARDED_META, "cpu"), "state_dict": {}}
        else:
            ckpt = _load(path, map_location)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickles: all mean "not our checkpoint"
        # torch's own message suggests weights_only=False, which we never do: name only the error's kind.
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: truncated, corrupt or not a torch file)"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} holds no 'state_dict' (not a distill-train checkpoint)")
    return ckpt


def _load(path: Path, map_location: Any) -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def read_sharded(path: Path) -> dict[str, Any]:
    """A sharded checkpoint as one process's dict: its ``state_dict`` whole (every rank's shards read)
    and ``meta.pt``'s entries. Needs no process group. The optimizer states (twice the weights under
    Adam) stay on disk: only a resume reads them, each rank its own shards."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    weights: dict[str, Any] = {}
    planner = _EmptyStateDictLoadPlanner(keys={"state_dict"})  # builds the dict from the stored metadata
    _load_state_dict(weights, storage_reader=FileSystemReader(str(path)), planner=planner, no_dist=True)
    return {**_load(path / SHARDED_META, "cpu"), **weights}


def stored_tensors(path: Path, prefix: str = "state_dict.") -> dict[str, torch.Tensor]:
    """The tensors a sharded checkpoint holds under ``prefix``, as meta tensors of their stored shape
    and dtype (read from its metadata alone): what ``prepare_to_load`` needs to grow state before loading."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {
        key.removeprefix(prefix): torch.empty(md.size, dtype=md.properties.dtype, device="meta")
        for key, md in metadata.items()
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata)
    }


def consolidate(sharded: str | Path, out: str | Path) -> Path:
    """Write the sharded checkpoint ``sharded`` as one checkpoint file ``out`` (atomically): whole
    weights and the run's metadata, for export, evaluation and ``init_from`` anywhere. Optimizer states
    are left out (resume from the sharded checkpoint itself)."""
    sharded, out = Path(sharded), Path(out)
    if not is_sharded_checkpoint(sharded):
        raise CheckpointError(f"{sharded} is not a sharded checkpoint (a folder holding {SHARDED_META})")
    write_checkpoint(read_checkpoint(sharded), out)
    return out


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with ``write_checkpoint`` and ``read_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location if map_location is not None else "cpu")
