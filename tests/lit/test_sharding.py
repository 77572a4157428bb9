"""FSDP: teacher, student, EMA and the method's nets are separate units; no unit mixes frozen and trainable."""

import socket

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from distill.config_schema import validate_train_config
from distill.errors import ConfigError
from distill.lit.distill import DistillModule
from distill.lit.sharding import (
    SeparateNetworks,
    check_fsdp_devices,
    is_fsdp,
    network_units,
    trainability,
)
from distill.methods import DMD2
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher


def dmd2_module() -> DistillModule:
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=32, depth=2)), (2,))
    return DistillModule(
        teacher,
        student_from_teacher(teacher.model),
        DMD2(generator_times=[1.0]),
        lambda p: torch.optim.Adam(p),
        ema_decays=[0.9, 0.99],
    )


def test_every_network_is_its_own_unit():
    module = dmd2_module()
    units = {name for name, m in module.named_modules() if any(m is u for u in network_units(module))}
    # the method's unit is DMD2's fake-score net; each EMA copy is a unit, sharded as the student is
    assert units == {"teacher", "student", "method", "ema.copies.0", "ema.copies.1"}


def test_a_lora_layer_splits_into_its_frozen_base_and_trainable_adapters():
    layer = torch.nn.ModuleDict({"base": torch.nn.Linear(4, 4).requires_grad_(False), "lora_a": torch.nn.Linear(4, 1)})
    assert network_units(layer) == [layer["base"], layer["lora_a"]]


@pytest.fixture
def one_process_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_wraps_each_network_and_its_large_blocks_in_uniform_units(one_process_group):
    wrapped = FSDP(
        dmd2_module(),
        auto_wrap_policy=SeparateNetworks(min_params=1000),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    units = {name.replace("_fsdp_wrapped_module.", ""): m for name, m in wrapped.named_modules() if isinstance(m, FSDP)}
    assert {"teacher", "student", "method", "ema.copies.0", "ema.copies.1"} <= set(units)
    assert any(name.startswith("student.net.blocks.") for name in units)  # blocks of >= min_params
    for name, unit in units.items():
        own = [
            p
            for p in unit.parameters()
            if not any(
                p is q for sub in unit.modules() if sub is not unit and isinstance(sub, FSDP) for q in sub.parameters()
            )
        ]
        assert len({p.requires_grad for p in own}) <= 1, name
    assert trainability(units["teacher"]) == {False} and trainability(units["student"]) == {True}


def test_the_fsdp_hardware_config_builds_lightnings_strategy_with_this_policy(compose_train):
    strategy = instantiate(compose_train("hardware=8xa100_fsdp").hardware.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert isinstance(strategy.kwargs["auto_wrap_policy"], SeparateNetworks)


@pytest.mark.parametrize("devices", [1, [0]])
def test_fsdp_on_one_device_is_refused_with_the_config_to_use_instead(devices):
    # torch turns FSDP on one device into NO_SHARD, under which the EMA update failed on an H100
    with pytest.raises(ConfigError, match="hardware=gpu"):
        check_fsdp_devices(devices, num_nodes=1)
    check_fsdp_devices(8, num_nodes=1)
    check_fsdp_devices(1, num_nodes=2)  # one GPU on each of two nodes still shards


def test_config_validation_refuses_single_device_fsdp_before_anything_is_built(compose_train):
    cfg = compose_train("hardware=8xa100_fsdp", "hardware.devices=1")
    with pytest.raises(ConfigError, match="shards nothing"):
        validate_train_config(cfg)
    validate_train_config(compose_train("hardware=8xa100_fsdp"))  # 8 devices: accepted
    assert is_fsdp(cfg.hardware.strategy) and is_fsdp("fsdp") and not is_fsdp("ddp")
