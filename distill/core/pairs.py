"""A sharded on-disk cache of (noise, endpoint) couplings, the training set of a reflow round.

Shard i holds ``size`` pairs whose noise comes from a seed fixed by ``(seed, i)``, so a shard is
made at most once: a resumed or repeated run reads it back instead of re-solving the ODE, and
gets the very same pairs. Shards are written atomically; a half-written file never appears.

Pairs of a conditional flow also carry each pair's condition as an integer label (a class, or a
row of the prompt table), drawn from the same fixed seed and stored in the shard beside the noise.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.io import load_weights, save_weights


class PairCacheError(RuntimeError):
    """A cached shard cannot be used; the message names the file and the fix."""


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # manual_seed takes < 2**63 safely


def shard_noise(seed: int | tuple[int, ...], index: int, size: int, shape: tuple[int, ...]) -> Tensor:
    """The unit noise of shard ``index``: (size, *shape) float32 on the CPU, whatever the device."""
    generator = torch.Generator().manual_seed(_seed_of(seed, index))
    return torch.randn(size, *shape, generator=generator)


def shard_labels(seed: int | tuple[int, ...], index: int, size: int, num_labels: int) -> Tensor:
    """The labels of shard ``index``: (size,) int64 uniform over ``num_labels``, fixed by the seed."""
    generator = torch.Generator().manual_seed(_seed_of(seed, index, "labels"))
    return torch.randint(num_labels, (size,), generator=generator)


def fingerprint(model: nn.Module, shape: tuple[int, ...], *settings: object) -> str:
    """A short hash of a model's weights, the sample shape and the pair settings: the cache's
    directory name, so pairs of another model (a later round's flow) or settings are never reused.

    A model without tensors (the analytic teacher) is hashed by its output on a fixed probe.
    """
    h = hashlib.sha256(f"{type(model).__name__}{tuple(shape)}{settings!r}".encode())
    state = model.state_dict()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if not state:
        probe = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            h.update(model(probe, torch.full((4,), 0.5, dtype=torch.float64)).double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class PairShards:
    """Shard ``i`` of the pairs ``(noise, endpoint(noise))``, made on first use, else read back.

    Args:
        directory: where shards live; None keeps them in memory only.
        size: pairs per shard.
        shape: shape of one sample.
        seed: base seed (int or tuple of ints); shard i's noise is ``shard_noise(seed, i, size, shape)``.
        endpoint: ``noise -> endpoint`` (e.g. ``ode_pairs`` of the round's flow), CPU in, CPU out;
            ``(noise, labels) -> endpoint`` when ``num_labels`` > 0.
        keep: shards held in memory (least recently used go first).
        target_shape: shape of one endpoint (default ``shape``; e.g. whole trajectories of several teachers).
        num_labels: > 0: each pair also carries a label in ``range(num_labels)`` (``labels(i)``).
    """

    def __init__(
        self,
        directory: str | Path | None,
        size: int,
        shape: tuple[int, ...],
        seed: int | tuple[int, ...],
        endpoint: Callable[..., Tensor],
        keep: int = 64,
        target_shape: tuple[int, ...] | None = None,
        num_labels: int = 0,
    ):
        self.directory = None if directory is None else Path(directory)
        self.size, self.shape, self.seed = size, tuple(shape), seed
        self.endpoint, self.keep, self.num_labels = endpoint, keep, num_labels
        self.target_shape = self.shape if target_shape is None else tuple(target_shape)
        self.loaded: OrderedDict[int, tuple[Tensor, Tensor, Tensor | None]] = OrderedDict()

    def path(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / f"shard_{index:05d}.safetensors"

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Shard ``index``'s ``(noise, endpoint)``."""
        return self.shard(index)[:2]

    def labels(self, index: int) -> Tensor:
        """Shard ``index``'s labels, (size,) int64 (a conditional cache only)."""
        labels = self.shard(index)[2]
        if labels is None:
            raise ValueError("this pair cache is unconditional (num_labels=0): its pairs carry no labels")
        return labels

    def shard(self, index: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(noise, endpoint, labels or None)`` of shard ``index``: made now, read back, or held."""
        if index in self.loaded:
            self.loaded.move_to_end(index)
            return self.loaded[index]
        noise = shard_noise(self.seed, index, self.size, self.shape)
        labels = shard_labels(self.seed, index, self.size, self.num_labels) if self.num_labels else None
        if self.directory is not None and self.path(index).exists():
            pair = noise, self._read(index, noise, labels), labels
        else:
            endpoint = self.endpoint(noise) if labels is None else self.endpoint(noise, labels)
            pair = noise, endpoint.float().cpu(), labels
            if self.directory is not None:
                stored = {"noise": noise, "endpoint": pair[1]} | ({} if labels is None else {"labels": labels})
                save_weights(self.path(index), stored)
        self.loaded[index] = pair
        while len(self.loaded) > self.keep:
            self.loaded.popitem(last=False)
        return pair

    def _read(self, index: int, noise: Tensor, labels: Tensor | None) -> Tensor:
        path = self.path(index)
        fix = f"delete it (or all of {self.directory}) and it is made again"
        try:
            tensors = load_weights(path)
        except Exception as err:  # safetensors raises its own error types for bad headers/sizes
            raise PairCacheError(f"pair shard {path} is unreadable ({err}); {fix}") from err
        keys = {"noise", "endpoint"} | ({"labels"} if labels is not None else set())
        if set(tensors) != keys or tensors["endpoint"].shape != (self.size, *self.target_shape):
            raise PairCacheError(
                f"pair shard {path} does not hold {self.size} pairs of shape {self.target_shape}"
                f"{' with labels' if labels is not None else ''}; {fix}"
            )
        if not torch.equal(tensors["noise"], noise):
            raise PairCacheError(f"pair shard {path} was made from other noise (seed or size changed); {fix}")
        if labels is not None and not torch.equal(tensors["labels"], labels):
            raise PairCacheError(f"pair shard {path} was made for other labels (seed or label count changed); {fix}")
        return tensors["endpoint"]
