"""Every paper config (conf/experiment/paper_*.yaml) composes, names its paper figure, and starts.

The real runs need GPUs and days; here each one runs a CPU ``fast_dev_run`` with a tiny stand-in
teacher of the same kind, so a config that no longer composes or starts fails in ``make test``.
Configs whose teacher is not one of ours (a diffusers pipeline, an EDM checkpoint) need a stand-in
of that kind, built by the test file that owns such pipelines; this file checks one exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distill.build import build_datamodule
from distill.train import train
from tests.app.test_train_app import image_folder
from tests.conftest import TINY_UNET, compose_config, train_tiny_teacher

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("paper_*.yaml"))
# a reported figure, e.g. "FID 2.06"; where the paper's number could not be checked the header says so
# the first step of a pair-based config waits for a whole shard of ODE solves: a small one here
SMALLER = {"paper_reflow_cifar10": ["method.objective.shard_size=8", "method.objective.ode_steps=2"]}
REPORTED_FIGURE = re.compile(r"(FID|FD|GenEval|CLIP score) \d+\.\d+|figure not verified")
STAND_IN = ["hardware=cpu", "debug=fast", "eval.metric=sw", "eval.num_samples=8", "eval.batch_size=8",
            "eval.teacher_nfes=[1]", "eval.every_n_steps=0", "train.global_batch_size=4"]


def test_there_is_a_paper_config_per_reported_row():
    assert len(PAPER_CONFIGS) >= 2


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_header_names_paper_table_and_figure(name):
    header = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "Paper:" in header and "Table" in header
    assert REPORTED_FIGURE.search(header), "the header must quote the reported figure (or say it is not verified)"


def started_elsewhere(name: str) -> list[Path]:
    """Test files other than this one that run ``experiment=<name>``."""
    this = Path(__file__).resolve()
    return [p for p in (REPO / "tests").rglob("test_*.py") if p != this and f"experiment={name}" in p.read_text()]


def stand_in_data(probe, tmp_path: Path, request) -> list[str]:
    """Overrides pointing the config's dataset at a few tiny images (CIFAR batches at 32x32, image
    folders at 8x8; two class folders where the config is class-conditional)."""
    if probe.dataset.name == "cifar10":
        return [f"dataset.root={request.getfixturevalue('fake_cifar_root')}"]
    if probe.dataset.get("class_folders"):  # ImageNet's layout: one subfolder per class
        for label in ("n01", "n02"):
            (tmp_path / "imagenet" / label).mkdir(parents=True)
            image_folder(tmp_path / "imagenet" / label)
        return [f"dataset.path={tmp_path / 'imagenet'}", "dataset.resolution=8"]
    return [f"dataset.path={image_folder(tmp_path)}", "dataset.resolution=8"]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_starts_with_a_tiny_stand_in(name, cache_dir, tmp_path, request):
    probe = compose_config("train", [f"experiment={name}"], tmp_path / "probe")
    if probe.teacher.kind != "checkpoint":  # e.g. a diffusers pipeline: started beside its stand-in builder
        assert started_elsewhere(name), f"paper config {name} (teacher.kind={probe.teacher.kind}) is started by no test"
        return
    data = stand_in_data(probe, tmp_path, request)
    dm = build_datamodule(compose_config("train", [f"experiment={name}", *data, *STAND_IN], tmp_path / "probe2"))
    spec = {**TINY_UNET, "num_classes": dm.num_classes} if probe.dataset.get("class_folders") else TINY_UNET
    train_tiny_teacher(tmp_path / "teacher", dm.train_tensor(), spec, steps=2)
    cfg = compose_config("train", [f"experiment={name}", *data, f"teacher.path={tmp_path / 'teacher'}", *STAND_IN,
                                   *SMALLER.get(name, [])],
                         tmp_path / "run")
    train(cfg)
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"}
    assert all(r["value"] == r["value"] for r in rows)
