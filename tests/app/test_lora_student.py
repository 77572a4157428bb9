"""``student=lora`` for any method: few trainable parameters, the teacher's weights shared, and a
finished LoRA run reloads (``distill-eval run_dir=...``) to the same sampling network."""

from __future__ import annotations

import pytest
import torch

from distill.build import build_datamodule, build_module, build_teacher
from distill.errors import ConfigError
from distill.runs import load_run_module
from tests.conftest import compose_config
from tests.helpers.runs import TINY_RUN, run


@pytest.mark.parametrize("method", ["progressive", "arcflow"])
def test_lora_run_trains_adapters_only_and_reloads(cache_dir, tmp_path, method):
    run_dir = run(tmp_path / "run", f"method={method}", "student=lora")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(".lora_A." in k for k in state) and not any(k.startswith("teacher.") for k in state)
    reloaded = load_run_module(run_dir, str(cache_dir))
    trained = {k: v for k, v in state.items() if k.startswith("student.")}
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in trained.items())
    teacher_ptrs = {p.data_ptr() for p in reloaded.teacher.parameters()}
    frozen = [p for p in reloaded.student.parameters() if not p.requires_grad]
    assert frozen and all(p.data_ptr() in teacher_ptrs for p in frozen)  # one copy of the body in memory
    trainable = sum(p.numel() for p in reloaded.student.parameters() if p.requires_grad)
    assert trainable < 0.1 * sum(p.numel() for p in reloaded.student.parameters())


def test_lora_targets_matching_nothing_fail_with_the_layer_names(cache_dir, tmp_path):
    cfg = compose_config("train", [*TINY_RUN, "student=lora", "student.lora.targets=[nope]"], tmp_path)
    with pytest.raises(ConfigError, match="student.lora.targets.*matched no layer"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))
