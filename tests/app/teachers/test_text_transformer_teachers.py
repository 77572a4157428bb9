"""SD3, FLUX.1 and Qwen-Image teachers (tiny random pipelines written here) distil end to end on
CPU: captions become condition tables, batches carry their prompts' inputs, CFG uses the empty
prompt; a trajectory and a distribution method, full students and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.evaluation.results import MEMORY_METRICS
from distill.train import train
from tests.helpers.text_pipeline import captioned_images, captioned_run
from tests.teachers.tiny_text_transformers import (
    save_flux_pipeline,
    save_qwen_pipeline,
    save_sd3_pipeline,
)

SAVERS = {"sd3": save_sd3_pipeline, "flux": save_flux_pipeline, "qwen": save_qwen_pipeline}


@pytest.fixture(scope="module")
def t2i_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_app")
    return {name: save(root / name) for name, save in SAVERS.items()}, captioned_images(root / "images")


def overrides(t2i_setup, family: str) -> list[str]:
    pipes, images = t2i_setup
    return [*captioned_run(pipes[family], images), "teacher.max_sequence_length=8"]


def student_nfes(cfg) -> set[int]:
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    return {r["nfe"] for r in rows if r["model"] == "student" and r["metric"] not in MEMORY_METRICS}


CASES = [(family, method, "copy_of_teacher") for family in SAVERS for method in ("progressive", "dmd2")]
CASES += [
    pytest.param(family, method, "lora", marks=pytest.mark.slow) for family in SAVERS for method in ("pcm", "dmd2")
]


@pytest.mark.parametrize(("family", "method", "student"), CASES)
def test_text_to_image_transformer_distils_end_to_end(compose_train, t2i_setup, family, method, student):
    cfg = compose_train(
        f"method={method}", f"student={student}", "debug=fast", *overrides(t2i_setup, family), "teacher.guidance=2.0"
    )
    train(cfg)
    assert student_nfes(cfg) == {1, 2, 4}


@pytest.mark.parametrize("family", ["flux", "qwen"])
def test_arcflow_distils_packed_token_transformers(compose_train, t2i_setup, family):
    """ArcFlow's momentum heads on FLUX.1 / Qwen-Image: LoRA + K heads through the adapter's unpacking."""
    cfg = compose_train(
        "method=arcflow",
        "method.objective.components=4",
        "debug=fast",
        *overrides(t2i_setup, family),
        "teacher.guidance=2.0",
    )
    train(cfg)
    assert student_nfes(cfg) == {1, 2, 4}


def test_a_bfloat16_teacher_runs_without_autocast(compose_train, t2i_setup):
    """teacher.dtype=bfloat16 (how 12B / 20B teachers fit): inputs are cast in, velocities out, and
    ArcFlow's float32 heads read the bfloat16 features, on a CPU run with no autocast."""
    cfg = compose_train(
        "method=arcflow",
        "method.objective.components=4",
        "debug=fast",
        "teacher.dtype=bfloat16",
        *overrides(t2i_setup, "flux"),
    )
    train(cfg)
    assert student_nfes(cfg) == {1, 2, 4}
