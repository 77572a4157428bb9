"""Global batch semantics: one function splits the global batch over devices and micro-batches."""

import pytest

from distill.errors import ConfigError
from distill.lit.batching import BatchPlan, plan_batches


def test_one_device_takes_the_whole_batch_in_one_pass():
    assert plan_batches(128, 1, steps=1500) == BatchPlan(128, 128, 128, 1, 1500)


def test_eight_gpus_two_nodes_split_the_global_batch_and_images_set_the_steps():
    plan = plan_batches(2048, 16, steps=0, images=5_000_000 // 2048 * 2048)
    assert (plan.device_batch, plan.micro_batch, plan.accumulation, plan.steps) == (128, 128, 1, 2441)
    assert plan.micro_batch * plan.accumulation * 16 == plan.global_batch


def test_a_device_batch_above_the_memory_limit_runs_as_micro_batches():
    plan = plan_batches(512, 8, steps=10, max_device_batch=16)
    assert (plan.device_batch, plan.micro_batch, plan.accumulation) == (64, 16, 4)
    assert plan_batches(512, 8, steps=10, max_device_batch=256).accumulation == 1  # the limit is not a target


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"global_batch": 100, "world_size": 8},
            "train.global_batch_size=100 does not split over 8 devices: use a multiple of 8 (96 or 104)",
        ),
        (
            {"global_batch": 96, "world_size": 8, "max_device_batch": 5},
            "the per-device batch 12 (global 96 / 8 devices) does not split into micro-batches",
        ),
        (
            {"global_batch": 64, "world_size": 2, "images": 1000},
            "train.images=1000 is not a whole number of steps of "
            "the global batch 64: use a multiple of it (960 or 1024)",
        ),
        ({"global_batch": 64, "world_size": 2, "images": 32}, "use a multiple of it (64)"),
    ],
)
def test_splits_that_do_not_divide_name_the_key_and_values_that_work(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        plan_batches(steps=1, **kwargs)
