"""Paper configs on Stable-Diffusion-class teachers train 30 CPU steps with the tiny SD stand-in."""

from __future__ import annotations

import json

import pytest

from distill.train import train
from tests.app.teachers.sd_stand_in import captioned_rgb_images, save_sd_pipeline
from tests.conftest import compose_config
from tests.helpers.paper_configs import STAND_IN, assert_trained, compressed


@pytest.fixture(scope="module")
def sd_stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return save_sd_pipeline(root / "pipe"), captioned_rgb_images(root / "images")


def start(name: str, sd_stand_in, tmp_path) -> list[dict]:
    pipe, images = sd_stand_in
    cfg = compose_config(
        "train",
        [
            f"experiment={name}",
            f"teacher.path={pipe}",
            f"dataset.path={images}",
            "dataset.resolution=8",
            *STAND_IN,
            *compressed(name),
        ],
        tmp_path / "run",
    )
    train(cfg)
    assert_trained(tmp_path / "run", name)
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_pcm_sd15_lora_trains(cache_dir, sd_stand_in, tmp_path):
    rows = start("paper_pcm_sd15_lora", sd_stand_in, tmp_path)  # experiment=paper_pcm_sd15_lora
    assert {r["model"] for r in rows} == {"teacher", "student"}
    assert all(r["value"] == r["value"] for r in rows)


def test_an_image_folder_is_scored_in_pixels_under_a_latent_teacher(compose_train, sd_stand_in):
    from distill.build import build_datamodule, build_teacher

    pipe, images = sd_stand_in
    cfg = compose_train(
        "teacher=diffusers",
        f"teacher.path={pipe}",
        "dataset=image_folder",
        f"dataset.path={images}",
        "dataset.resolution=8",
        "dataset.captions=true",
    )
    dm = build_datamodule(cfg)
    build_teacher(cfg, dm)
    assert dm.train_tensor().shape[1:] == (4, 4, 4)  # trains on latents
    assert dm.reference_samples(4).shape == (4, 3, 8, 8)  # scores against the images


def test_instaflow_sd_trains_on_prompts_alone(cache_dir, sd_stand_in, tmp_path):
    """experiment=paper_instaflow_sd: reflow of the SD stand-in on a prompt file, pairs labelled by prompt."""
    from safetensors.torch import load_file

    from tests.app.teachers.sd_stand_in import CAPTIONS

    pipe, _ = sd_stand_in
    (tmp_path / "prompts.txt").write_text("\n".join(CAPTIONS))
    cfg = compose_config(
        "train",
        [
            "experiment=paper_instaflow_sd",
            f"teacher.path={pipe}",
            f"dataset.path={tmp_path / 'prompts.txt'}",
            "dataset.resolution=8",
            "dataset.sample_steps=2",
            "method.objective.shard_size=4",
            "method.objective.ode_steps=2",
            f"method.objective.pair_dir={tmp_path / 'pairs'}",
            *STAND_IN,
            *compressed("paper_instaflow_sd"),
        ],
        tmp_path / "run",
    )
    train(cfg)
    assert_trained(tmp_path / "run", "paper_instaflow_sd")
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"} and all(r["value"] == r["value"] for r in rows)
    shard = next((tmp_path / "pairs").rglob("shard_*.safetensors"))  # this run's pairs, not another test's
    assert int(load_file(shard)["labels"].max()) < len(CAPTIONS)  # each pair names its prompt
