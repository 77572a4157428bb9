"""Memory a method costs: the weights it holds, and the peak the process reached while training.

Methods differ mostly in how many network copies they keep (DMD2: teacher, student, fake-score
net and a discriminator, plus EMA copies), which ``module_memory_bytes`` counts exactly; the
peak adds activations and optimizer state.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable

import torch
from torch import nn

from distill.lit.sharding import local_tensor

MIB = 2**20


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages under ``tensors``, each once; of a shard (DTensor), this rank's part only."""
    storages: dict[tuple[torch.device, int], int] = {}
    for t in tensors:
        storage = local_tensor(t).untyped_storage()
        key = (t.device, storage.data_ptr())
        storages[key] = max(storages.get(key, 0), storage.nbytes())
    return sum(storages.values())


def module_memory_bytes(*modules: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``modules``, each storage once (tied or shared weights count
    once); of sharded modules, this rank's shards.

    Tensors kept as plain attributes (not parameters or buffers) and optimizer state are not counted.
    """
    return storage_bytes(t for module in modules for t in (*module.parameters(), *module.buffers()))


def optimizer_memory_bytes(*optimizers: torch.optim.Optimizer) -> int:
    """Bytes of the optimizers' state (Adam's two moments per parameter); of sharded parameters, this rank's."""
    return storage_bytes(
        v for opt in optimizers for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    )


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh CUDA peak (CPU peak RSS cannot be reset: it covers the whole process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak bytes allocated by tensors since the last reset. CPU: the process's peak RSS.

    The CPU figure includes the Python runtime, libraries and the dataset, so compare it only
    between runs on the same data and machine.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
