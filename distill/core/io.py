"""Atomic, safe file writes and reads: a crash mid-write never leaves a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in_directory(staging: str | Path, out: str | Path) -> Path:
    """Make the finished directory ``staging`` be ``out``. A previous ``out`` is first renamed to
    ``<stem>.old<suffix>`` and removed only once the new one is in place, so a crash at any point
    leaves a whole directory under one of the two names."""
    staging, out = Path(staging), Path(out)
    old = out.with_name(f"{out.stem}.old{out.suffix}")
    if out.exists():  # an ``old`` left by a crash is stale only while ``out`` is whole
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def replace_directory(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a fresh ``<out>.tmp`` directory, then swap it in for ``out``
    (``swap_in_directory``): a crash at any point leaves a whole directory (a stale ``.tmp`` is cleared
    by the next call)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    return swap_in_directory(tmp, out)


def cache_key(text: str) -> str:
    """A short stable name for a cache folder: 16 hex digits of ``text``'s SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weight_summary(module: torch.nn.Module) -> tuple[tuple[int, ...], float]:
    """(shape, sum) of a module's first parameter: cheap, and changes when its weights do."""
    first = next(module.parameters())
    return tuple(first.shape), float(first.detach().double().sum())


def save_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Safetensors, after checking every tensor is finite (a NaN model must never replace a good one)."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"refusing to save non-finite weights ({', '.join(bad[:3])}...) to {path}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load safetensors weights; never unpickles anything."""
    return load_file(str(path))


def cached_in_shards(
    folder: str | Path | None,
    count: int,
    shard_size: int,
    key: str,
    make: Callable[[int, int], torch.Tensor],
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """Rows ``0 .. count`` of a table made ``make(start, stop)`` one shard at a time, each shard read
    back from ``folder`` when it is there and written there (atomically) when it is made; ``folder``
    None keeps nothing. ``key`` names the tensor inside each shard file."""
    folder = None if folder is None else Path(folder)
    shards = []
    for index, start in enumerate(tqdm(range(0, count, shard_size), desc=desc, disable=not progress, leave=False)):
        path = None if folder is None else folder / f"shard_{index:05d}.safetensors"
        if path is not None and path.is_file():
            shards.append(load_weights(path)[key])
            continue
        rows = make(start, min(start + shard_size, count))
        if path is not None:
            save_weights(path, {key: rows})  # a crash never leaves half a shard
        shards.append(rows)
    return torch.cat(shards)
