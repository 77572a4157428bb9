"""Paper configs on text-to-image transformer teachers (Qwen-Image, FLUX.1-dev, SD3) train 30 CPU steps
with tiny stand-ins of the same classes (tests/teachers/tiny_text_transformers.py, with VAEs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.train import train
from tests.conftest import compose_config
from tests.helpers.paper_configs import STAND_IN, assert_trained, compressed
from tests.teachers.tiny_text_transformers import (
    captioned_rgb_images,
    save_flux_pipeline,
    save_qwen_pipeline,
    save_sd3_pipeline,
)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_papers")
    return {
        "qwen": save_qwen_pipeline(root / "qwen", vae=True),
        "flux_dev": save_flux_pipeline(root / "flux_dev", guidance_embeds=True, vae=True),
        "sd3": save_sd3_pipeline(root / "sd3", vae=True),
        "images": captioned_rgb_images(root / "images"),
    }


def start(name: str, pipeline: Path, stand_ins, run_dir: Path, *extra: str) -> list[dict]:
    cfg = compose_config(
        "train",
        [
            f"experiment={name}",
            f"teacher.path={pipeline}",
            f"dataset.path={stand_ins['images']}",
            "dataset.resolution=8",
            "teacher.max_sequence_length=8",
            *STAND_IN,
            *compressed(name),
            *extra,
        ],
        run_dir,
    )
    train(cfg)
    assert_trained(run_dir, name)
    rows = json.loads((run_dir / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"}
    assert all(r["value"] == r["value"] for r in rows)
    return rows


def test_arcflow_qwen_image_trains(cache_dir, stand_ins, tmp_path):
    start(
        "paper_arcflow_qwen_image", stand_ins["qwen"], stand_ins, tmp_path / "run"
    )  # experiment=paper_arcflow_qwen_image


def test_arcflow_flux_dev_trains(cache_dir, stand_ins, tmp_path):
    start(
        "paper_arcflow_flux_dev", stand_ins["flux_dev"], stand_ins, tmp_path / "run"
    )  # experiment=paper_arcflow_flux_dev


def test_rcm_t2i_trains(cache_dir, stand_ins, tmp_path):
    start("paper_rcm_t2i", stand_ins["sd3"], stand_ins, tmp_path / "run")  # experiment=paper_rcm_t2i


@pytest.mark.slow  # 17 s: both Qwen-Image turbo stages, 30 steps each, in turn
def test_qwen_turbo_pair_starts_stage2_from_stage1s_lora(cache_dir, stand_ins, tmp_path):
    start(
        "paper_qwen_turbo_stage1", stand_ins["qwen"], stand_ins, tmp_path / "stage1"
    )  # experiment=paper_qwen_turbo_stage1
    rows = start(
        "paper_qwen_turbo_stage2",
        stand_ins["qwen"],
        stand_ins,
        tmp_path / "stage2",  # experiment=paper_qwen_turbo_stage2
        f"init_from={tmp_path / 'stage1'}",
    )
    assert {r["nfe"] for r in rows if r["model"] == "student"} >= {2}
