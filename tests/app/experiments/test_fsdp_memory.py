"""experiments/fsdp_memory.py: the memory rule it compares against, and its table."""

import torch

from tests.helpers.experiments import load_experiment
from tests.lit.test_sharding import dmd2_module


def load_script():
    return load_experiment("fsdp_memory")


def test_the_rule_is_16_bytes_per_trained_parameter_and_4_per_frozen_one():
    script, module = load_script(), dmd2_module()
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    assert trained and frozen and script.estimate_bytes(module) == 16 * trained + 4 * frozen


def test_the_table_reports_the_fullest_rank_against_the_rule_over_n():
    script = load_script()
    rank = {"weights": 4096, "gradients": 1024, "optimizer": 2048, "estimate": 7168, "teacher_parameters": 1}
    emptier = {**rank, "weights": 1024}
    table = script.report({"dmd2": {2: [emptier, rank]}}, seconds=1.0)
    assert "| dmd2 | 2 | 4 | 1 | 2 | 7 | 7 | 1.00 |" in table
    assert torch.__version__ in table
