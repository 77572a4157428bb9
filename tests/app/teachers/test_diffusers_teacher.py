"""Bring your own teacher: tiny diffusers UNets (epsilon on a DDPM schedule, and flow matching),
saved and loaded back from disk, distil end to end with trajectory and distribution methods,
as full students and as LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.evaluation.results import MEMORY_METRICS
from distill.train import train
from tests.helpers.diffusers_models import save_flow_model, save_pipeline


@pytest.mark.parametrize(
    ("layout", "method", "student"),
    [
        ("ddpm_epsilon", "progressive", "copy_of_teacher"),
        pytest.param("ddpm_epsilon", "progressive", "lora", marks=pytest.mark.slow),
        ("ddpm_epsilon", "dmd2", "lora"),
        pytest.param("ddpm_epsilon", "dmd2", "copy_of_teacher", marks=pytest.mark.slow),
        ("flow", "arcflow", "lora"),
        ("flow", "consistency", "lora"),
        ("flow", "gdd", "copy_of_teacher"),
    ],
)
def test_diffusers_teacher_distils_end_to_end(compose_train, tmp_path, layout, method, student):
    path = tmp_path / layout
    save_pipeline(path) if layout == "ddpm_epsilon" else save_flow_model(path)
    cfg = compose_train(
        f"method={method}", "debug=fast", "teacher=diffusers", f"teacher.path={path}", f"student={student}"
    )
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    student_nfes = {r["nfe"] for r in rows if r["model"] == "student" and r["metric"] not in MEMORY_METRICS}
    assert student_nfes == {1, 2, 4}


def save_flow_dit(directory: Path) -> Path:
    """A tiny class-conditional DiT (10 classes, the null class last) with a flow-matching scheduler."""
    import torch
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    ).save_pretrained(directory / "transformer")
    FlowMatchEulerDiscreteScheduler().save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    return directory


@pytest.mark.parametrize(
    ("method", "student"),
    [
        ("progressive", "lora"),
        pytest.param("progressive", "copy_of_teacher", marks=pytest.mark.slow),
        pytest.param("dmd2", "lora", marks=pytest.mark.slow),
        ("dmd2", "copy_of_teacher"),
    ],
)
def test_flow_transformer_teacher_distils_class_conditionally(compose_train, tmp_path, method, student):
    path = save_flow_dit(tmp_path / "dit")
    cfg = compose_train(
        f"method={method}",
        "debug=fast",
        "teacher=diffusers",
        f"teacher.path={path}",
        f"student={student}",
        "teacher.guidance=1.5",
    )
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["model"] for r in rows if r["metric"] == "class_accuracy"} == {"teacher", "student"}


def test_arcflow_runs_on_patch_token_transformers(compose_train, tmp_path):
    """The momentum heads' outputs go through the DiT's own unpatchify, stacked along the batch."""
    path = save_flow_dit(tmp_path / "dit")
    cfg = compose_train(
        "method=arcflow",
        "method.objective.components=4",
        "debug=fast",
        "teacher=diffusers",
        f"teacher.path={path}",
        "teacher.guidance=1.5",
    )
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["model"] for r in rows if r["metric"] == "class_accuracy"} == {"teacher", "student"}
