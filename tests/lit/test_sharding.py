"""FSDP2 units: every module that owns parameters, each once, a LoRA student's shared layers the
teacher's own; the configs build the strategy; Lightning's FSDP1 is refused with the config to use.
(Two and four ranks against DDP: tests/lit/test_fsdp.py.)"""

import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from torch import nn

from distill.config_schema import validate_train_config
from distill.errors import ConfigError
from distill.lit.distill import DistillModule
from distill.lit.sharding import (
    FullyShardedStrategy,
    adopt_teacher_modules,
    check_strategy,
    full_tensor,
    is_sharded,
    parameter_owners,
)
from distill.methods import DMD2
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.students.lora import add_lora, share_frozen_weights
from distill.teachers import Teacher
from tests.helpers.modules import fit, make_module, ring_batches


def dmd2_module() -> DistillModule:
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=32, depth=2)), (2,))
    return DistillModule(
        teacher, student_from_teacher(teacher.model), DMD2(generator_times=[1.0]), torch.optim.Adam, ema_decays=[0.9]
    )


def test_units_are_the_parameter_owners_deepest_first_and_the_teacher_can_stay_whole():
    module = dmd2_module()
    owners = parameter_owners(module)
    names = {id(m): name for name, m in module.named_modules()}
    assert all(any(True for _ in m.parameters(recurse=False)) for m in owners)
    # every parameter in exactly one unit
    assert sorted(id(p) for m in owners for p in m.parameters(recurse=False)) == sorted(
        id(p) for p in module.parameters()
    )
    position = {id(m): i for i, m in enumerate(owners)}
    for name, m in module.named_modules():
        for child in m.modules():
            if child is not m and id(child) in position and id(m) in position:
                assert position[id(child)] < position[id(m)], f"{names[id(child)]} after its parent {name}"
    kept_whole = parameter_owners(module, skip=("teacher",))
    assert {names[id(m)].split(".")[0] for m in kept_whole} == {"student", "method", "ema"}


def test_a_lora_students_shared_frozen_layers_become_the_teachers_own_modules():
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=2)), (2,))
    student = add_lora(student_from_teacher(teacher.model), 2, 2, r".*blocks\.\d+\.fc\d")
    shared = share_frozen_weights(student, teacher.model)
    root = nn.ModuleDict({"teacher": teacher, "student": student})
    before = {name: p.clone() for name, p in root.named_parameters(remove_duplicate=False)}
    adopted = adopt_teacher_modules(root)
    assert shared > 0 and adopted > 0
    teacher_modules = {id(m) for m in teacher.modules()}
    for name, m in student.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            assert id(m) in teacher_modules, f"{name} still holds its own frozen copy"
    lora = [p for n, p in student.named_parameters() if "lora_" in n]
    assert lora and all(id(p) not in {id(q) for q in teacher.parameters()} for p in lora)
    for name, p in root.named_parameters(remove_duplicate=False):  # same names, same values
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    "strategy", ["fsdp", "fsdp_cpu_offload", {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}]
)
def test_lightnings_fsdp1_is_refused_with_the_configs_to_use(strategy):
    with pytest.raises(ConfigError, match="hardware=fsdp_sim"):
        check_strategy(strategy)
    check_strategy("ddp")


@pytest.mark.parametrize("hardware", ["fsdp_sim", "8xa100_fsdp"])
def test_the_fsdp_hardware_configs_validate_and_build_the_fsdp2_strategy(compose_train, hardware):
    cfg = compose_train(f"hardware={hardware}")
    validate_train_config(cfg)
    strategy = instantiate(cfg.hardware.strategy)
    assert isinstance(strategy, FullyShardedStrategy) and strategy.shard_teacher
    if hardware == "8xa100_fsdp":  # gathered in bf16, reduced in fp32
        assert (strategy.mp_policy.param_dtype, strategy.mp_policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    else:
        assert cfg.hardware.devices == 2 and strategy.mp_policy.param_dtype is None


def fit_on_one_rank(module: DistillModule, strategy: FullyShardedStrategy) -> dict[str, torch.Tensor]:
    """``fit`` under ``strategy`` on one CPU process (a gloo group of one); the whole state after it."""
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        use_distributed_sampler=False,  # as build_trainer
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    env = dict(os.environ)  # Lightning sets MASTER_ADDR / MASTER_PORT for its one-process group
    try:
        trainer.fit(module, ring_batches())
        return {k: full_tensor(v) for k, v in module.state_dict().items()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(env)


@pytest.mark.parametrize("shard_teacher", [True, False])
def test_fsdp2_on_one_rank_trains_exactly_as_no_strategy(tmp_path, monkeypatch, shard_teacher):
    # FSDP2 on one device shards over a mesh of one (no NO_SHARD fallback, unlike FSDP1).
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # a strategy re-seeds from it (an earlier test's seed)
    plain = make_module()
    fit(plain, 6, tmp_path / "plain")
    sharded = make_module()
    state = fit_on_one_rank(sharded, FullyShardedStrategy(shard_teacher=shard_teacher, process_group_backend="gloo"))
    assert is_sharded(sharded.student) and is_sharded(sharded.ema) and is_sharded(sharded.teacher) == shard_teacher
    assert state.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


def test_bf16_gathering_keeps_fp32_shards_and_trains(tmp_path):
    # hardware=8xa100_fsdp's policy: weights gathered and used in bf16, stored and stepped in fp32.
    module = make_module()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    seen: list[torch.dtype] = []
    layer = next(m for m in module.student.modules() if isinstance(m, nn.Linear))
    layer.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    strategy = FullyShardedStrategy(param_dtype="bfloat16", reduce_dtype="float32", process_group_backend="gloo")
    state = fit_on_one_rank(module, strategy)
    assert seen and set(seen) == {torch.bfloat16}  # computed in bf16 ...
    assert all(p.dtype == torch.float32 for p in module.student.parameters())  # ... stored in fp32
    moved = [k for k in start if k.startswith("student.") and not torch.equal(state[k], start[k])]
    assert moved and all(torch.isfinite(v).all() for v in state.values())


def test_a_method_that_differentiates_a_gradient_is_refused_with_the_fix(monkeypatch):
    # GDD's R1 penalty: the second backward runs after FSDP's gradient hooks fired (its D gradient
    # norm came out 10% off DDP's on two ranks), so FSDP is refused rather than trained wrong.
    from distill.methods.gdd import GDD

    assert GDD().double_backward and not GDD(r1_gamma=0).double_backward
    module = make_module()
    monkeypatch.setattr(type(module.method), "double_backward", property(lambda self: True))  # as GDD with R1
    with pytest.raises(ConfigError, match="method.objective.r1_gamma=0, or train it with DDP"):
        fit_on_one_rank(module, FullyShardedStrategy(process_group_backend="gloo"))
