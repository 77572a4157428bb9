"""FSDP for distillation: FSDP2 (``fully_shard``) on every module that owns parameters.

Each parameter is sharded over the ranks along its first dimension (a ``DTensor``); a module's own
parameters are gathered just before its ``forward`` and freed after it (and again in backward).
Methods reach into their networks (GAN heads read a teacher's inner layers through hooks, ArcFlow
calls its student's ``mixture``, LoRA layers mix frozen and trainable weights), so the unit is the
smallest one that is always right: the module whose ``forward`` uses the parameter, which is the
module that owns it. Teacher, student, its EMA copies and the method's networks are sharded alike,
so an EMA copy's shards pair with the student's and its update stays elementwise.

Everything that reads whole weights follows from that: the optimizers step their shards, the
gradient norm is the global one (``clip_grad_norm_`` over DTensor gradients reduces across ranks),
evaluation runs its forwards on every rank (``EvaluationCallback``), and checkpoints are
torch distributed checkpoints, one shard file per rank (``distill.lit.checkpoint_io``).

Lightning's ``ModelParallelStrategy`` starts the ranks and calls ``DistillModule.configure_model``,
which calls ``FullyShardedStrategy.shard``; ``hardware=fsdp_sim`` runs it on two CPU ranks (gloo).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from distill.core.io import swap_in_directory
from distill.errors import ConfigError
from distill.lit.checkpoint_io import is_sharded_checkpoint, stored_tensors
from distill.nets.freezing import SHARDED_COPY

TEACHER = "teacher"


def owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def parameter_owners(root: nn.Module, skip: tuple[str, ...] = ()) -> list[nn.Module]:
    """The modules of ``root`` that own parameters themselves, each once, deepest first (``fully_shard``
    must reach a module's children before the module), leaving out those under the ``skip`` prefixes.

    A module shared by two networks (a LoRA student's frozen layer and the teacher) is listed once,
    and skipped when any of its names is: a teacher kept whole keeps the layers it shares whole."""
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in root.named_modules(remove_duplicate=False):
        if owns_parameters(module):
            names.setdefault(id(module), []).append(name)
            modules.setdefault(id(module), module)
    order = [m for _, m in root.named_modules() if id(m) in modules]  # pre-order: parents before children
    kept = [m for m in order if not any(_under(n, skip) for n in names[id(m)])]
    return kept[::-1]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def adopt_teacher_modules(root: nn.Module) -> int:
    """Make each module outside the teacher whose own weights all *are* one teacher module's (a LoRA
    student's frozen layers after ``distill.students.lora.share_frozen_weights``) that very module.

    FSDP can shard a tensor in one unit only: sharded twice, the shared weights would become two
    copies. As one module they stay one, gathered whenever either network runs it. Returns the count.
    """
    if not isinstance(getattr(root, TEACHER, None), nn.Module):
        return 0
    owner = {id(p): m for m in root.get_submodule(TEACHER).modules() for p in m.parameters(recurse=False)}
    adopted = 0
    for name, module in list(root.named_modules()):
        if _under(name, (TEACHER,)) or not owns_parameters(module) or any(True for _ in module.children()):
            continue
        own = dict(module.named_parameters(recurse=False))
        twin = owner.get(id(next(iter(own.values()))))
        if twin is None or twin is module or type(twin) is not type(module):
            continue
        theirs = dict(twin.named_parameters(recurse=False))
        if theirs.keys() == own.keys() and all(theirs[k] is p for k, p in own.items()):
            if not any(True for _ in module.buffers(recurse=False)):
                parent, _, attr = name.rpartition(".")
                setattr(root.get_submodule(parent), attr, twin)
                adopted += 1
    return adopted


def shard_networks(
    root: nn.Module, mesh, shard_teacher: bool = True, mp_policy: MixedPrecisionPolicy | None = None
) -> int:
    """``fully_shard`` every parameter owner of ``root`` over ``mesh``; the teacher's only when
    ``shard_teacher`` (else each rank keeps a whole frozen copy). Returns the number of units."""
    adopt_teacher_modules(root)
    owners = parameter_owners(root, skip=() if shard_teacher else (TEACHER,))
    for module in owners:
        shard_unit(module, mesh, mp_policy)
    return len(owners)


def shard_unit(module: nn.Module, mesh, mp_policy: MixedPrecisionPolicy | None = None) -> None:
    """``fully_shard`` one unit. Every unit is a root of its own (no unit holds another's call), and
    FSDP keeps a root's weights whole after forward unless told otherwise: a teacher evaluated without
    backward would then stay gathered for good."""
    fully_shard(module, mesh=mesh, mp_policy=mp_policy or MixedPrecisionPolicy(), reshard_after_forward=True)


def sharded_twin(template: nn.Module, source: nn.Module, mesh, mp_policy: MixedPrecisionPolicy) -> nn.Module:
    """A copy of the sharded ``source`` with its own shards: ``template`` (``source`` as it was before
    sharding, on the meta device) copied, sharded where ``source`` is, then given this rank's values.

    FSDP modules cannot be deep-copied, and the methods that snapshot their student while training
    (progressive distillation's rounds, reflow's stages) do so through ``frozen_copy``, which calls this.
    """
    twin = copy.deepcopy(template)
    units = {name for name, m in source.named_modules() if isinstance(m, FSDPModule)}
    for name, module in reversed(list(twin.named_modules())):
        if name in units:
            shard_unit(module, mesh, mp_policy)
    twin.to_empty(device=local_tensor(next(source.parameters())).device)
    with torch.no_grad():
        for (name, mine), (theirs_name, theirs) in zip(
            [*twin.named_parameters(), *twin.named_buffers()],
            [*source.named_parameters(), *source.named_buffers()],
            strict=True,
        ):
            if name != theirs_name:
                raise RuntimeError(f"a sharded copy lists {name} where its source lists {theirs_name}")
            local_tensor(mine).copy_(local_tensor(theirs))
    return twin


def copy_sharded_with(module: nn.Module, mesh, mp_policy: MixedPrecisionPolicy) -> None:
    """Before ``module`` is sharded: let ``frozen_copy`` copy it once it is (``sharded_twin``)."""
    template = meta_copy(module)
    setattr_plain(module, SHARDED_COPY, lambda: sharded_twin(template, module, mesh, mp_policy))


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are on the meta device, made without
    allocating them a second time (the networks FSDP is for may not fit twice)."""
    memo: dict[int, torch.Tensor] = {}
    for t in (*module.parameters(), *module.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def setattr_plain(module: nn.Module, name: str, value) -> None:
    """An attribute that is neither a submodule nor state (no parameters, not in the state dict)."""
    object.__setattr__(module, name, value)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a shard (a DTensor)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: its shard when ``t`` is a DTensor, else ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t`` (a collective when ``t`` is a DTensor: every rank must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's FSDP2 strategy, every rank one data-parallel shard (no tensor parallelism).

    Args:
        shard_teacher: shard the frozen teacher like the rest (False: a whole copy on every rank,
            which saves its all-gathers when it fits).
        param_dtype: the dtype parameters are gathered and computed in (``bfloat16`` halves the
            all-gather traffic); None keeps theirs. Autocast (``hardware.precision``) applies either way.
        reduce_dtype: the dtype gradients are reduced in; None: ``param_dtype``'s.
        distributed_checkpoint: save one shard file per rank (torch distributed checkpoint) rather
            than gathering everything on rank 0.
        process_group_backend: ``gloo`` on CPU ranks, ``nccl`` on GPUs; None picks by device.
    """

    def __init__(
        self,
        shard_teacher: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ):
        super().__init__(
            save_distributed_checkpoint=distributed_checkpoint, process_group_backend=process_group_backend
        )
        self.shard_teacher = shard_teacher
        self.mp_policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype])

    def setup_environment(self) -> None:
        # Lightning's default mesh is tensor-parallel within a node; here every rank holds one shard.
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1
        super().setup_environment()

    def shard(self, module: nn.Module) -> None:
        """Shard ``module``'s networks over the data-parallel ranks (once; ``configure_model`` may run again)."""
        if module.method.double_backward:
            raise ConfigError(
                f"method={module.method.name} differentiates a gradient (its R1 penalty), which FSDP does not "
                "reduce correctly (the second backward runs after the weights' gradient hooks fired): set "
                "method.objective.r1_gamma=0, or train it with DDP (hardware=ddp_sim, 8xa100_ddp)"
            )
        if not is_sharded(module):
            mesh = self.device_mesh["data_parallel"]
            copy_sharded_with(module.student, mesh, self.mp_policy)
            shard_networks(module, mesh, self.shard_teacher, self.mp_policy)

    # --- checkpoints: one shard file per rank, written whole or not at all -------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """Every rank writes its shards into a staging folder beside ``filepath``; once all are done,
        rank zero swaps it in (``swap_in_directory``), so a run killed mid-save keeps its last checkpoint."""
        if not self._save_distributed_checkpoint:  # one gathered file, through the atomic CheckpointIO
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.partial")
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier("staging cleared")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("shards written")
        if self.is_global_zero:
            swap_in_directory(staging, path)
        self.barrier("checkpoint in place")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Grow what the checkpoint grew (progressive distillation's round snapshots, DMD2's pair
        buffers) before its shards are read into the module: the shards load into what exists."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if is_sharded_checkpoint(path):
            self.lightning_module.prepare_to_load(stored_tensors(path))
            materialize_meta_buffers(self.lightning_module, self.root_device)
        return super().load_checkpoint(path, weights_only)


def materialize_meta_buffers(module: nn.Module, device: torch.device) -> None:
    """Give buffers grown on the meta device (shaped after a checkpoint's metadata) real storage to load into."""
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            persistent = attr not in owner._non_persistent_buffers_set
            owner.register_buffer(attr, torch.empty_like(buffer, device=device), persistent=persistent)


def is_lightning_fsdp1(strategy: str | Mapping) -> bool:
    """Whether a ``hardware.strategy`` names Lightning's own FSDP (FSDP1, ``fsdp`` or ``FSDPStrategy``)."""
    target = strategy.get("_target_", "") if isinstance(strategy, Mapping) else strategy
    return str(target).startswith("fsdp") or str(target).endswith("FSDPStrategy")


def check_strategy(strategy: str | Mapping) -> None:
    """Refuse Lightning's FSDP1 strategies: they wrap the whole module as one flat unit, which cannot
    hold frozen and trainable weights together, so nothing here would shard as documented."""
    if is_lightning_fsdp1(strategy):
        name = strategy.get("_target_") if isinstance(strategy, Mapping) else strategy
        raise ConfigError(
            f"hardware.strategy={name} is Lightning's FSDP1 wrapper, which distill does not shard with: "
            "use hardware=fsdp_sim (CPU ranks) or hardware=8xa100_fsdp, whose strategy is "
            "distill.lit.sharding.FullyShardedStrategy (FSDP2)"
        )
