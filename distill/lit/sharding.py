"""FSDP for distillation: every network a sharding unit of its own.

A flat FSDP unit holds parameters that are either all trainable or all frozen, so the frozen
teacher, the trainable student, its frozen EMA copies and the method's auxiliaries (fake score,
discriminator) cannot share one (docs/scaling.md, FSDP). ``SeparateNetworks`` wraps each *maximal
uniform subtree* (the largest modules whose parameters all train, or all do not) as a unit, and
inside those every block of at least ``min_params`` parameters, so that a large network is
gathered block by block rather than whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from distill.errors import ConfigError


def trainability(module: nn.Module) -> set[bool]:
    """The ``requires_grad`` values among ``module``'s parameters: {True}, {False}, both, or none."""
    return {p.requires_grad for p in module.parameters()}


def network_units(root: nn.Module) -> list[nn.Module]:
    """The maximal submodules of ``root`` whose parameters are all trainable or all frozen.

    ``root`` itself when it is uniform; else the uniform children, and the same search inside
    each mixed child (a LoRA layer: frozen base, trainable adapters). A uniform module whose
    parameters all sit in one ``nn.ModuleList`` (the EMA copies) gives one unit per element, so
    each copy shards exactly as the student does and the EMA update pairs matching shards.
    Parameter-free modules are not units.
    """
    kinds = trainability(root)
    if not kinds:
        return []
    if len(kinds) == 1:
        holders = [c for c in root.children() if trainability(c)]
        own = any(True for _ in root.parameters(recurse=False))
        if len(holders) == 1 and isinstance(holders[0], nn.ModuleList) and not own:
            return [m for m in holders[0] if trainability(m)]
        return [root]
    return [unit for child in root.children() for unit in network_units(child)]


class SeparateNetworks:
    """An FSDP ``auto_wrap_policy``: the units of ``network_units`` and, inside them, every uniform
    module of at least ``min_params`` parameters. FSDP calls it first with the root module."""

    def __init__(self, min_params: int = 10**7):
        self.min_params = min_params
        self._units: set[int] | None = None

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int, **_: Any) -> bool:
        if self._units is None:  # the first call is FSDP's root: the whole LightningModule
            self._units = {id(m) for m in network_units(module)}
        if recurse:
            return True
        if id(module) in self._units:
            return True
        return nonwrapped_numel >= self.min_params and len(trainability(module)) == 1


def fsdp_strategy(min_params: int = 10**7, **kwargs: Any) -> FSDPStrategy:
    """Lightning's ``FSDPStrategy`` wrapping with ``SeparateNetworks`` (``kwargs`` go to the strategy:
    ``sharding_strategy``, ``state_dict_type``, ``cpu_offload``, ...)."""
    return FSDPStrategy(auto_wrap_policy=SeparateNetworks(min_params), **kwargs)


def is_fsdp(strategy: str | Mapping) -> bool:
    """Whether a ``hardware.strategy`` (a Lightning strategy name, or a config to instantiate) is FSDP."""
    target = strategy.get("_target_", "") if isinstance(strategy, Mapping) else strategy
    return "fsdp" in str(target).lower()


def check_fsdp_devices(devices: int | str | list, num_nodes: int) -> None:
    """Refuse FSDP on a single device. It would shard nothing: torch falls back to ``NO_SHARD``,
    which leaves a network's own parameters unregistered after a forward that no backward follows
    (seen on an H100), so the student and its EMA copies no longer list the same parameters."""
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    if count == 1 and num_nodes == 1:
        raise ConfigError(
            "an FSDP strategy on one device shards nothing (torch falls back to NO_SHARD, under which "
            "the EMA update fails): on one GPU use hardware=gpu, or give FSDP several devices "
            "(hardware.devices=8)"
        )
