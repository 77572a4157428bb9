"""Every paper config (conf/experiment/paper_*.yaml) composes, names its paper figure, and trains.

The real runs need GPUs and days; here each one trains 30 optimizer steps on CPU with a tiny stand-in
teacher of the same kind, its stage schedules compressed so that a stage or phase change (ECT's
stages, rCM's sCM-only warm-up, reflow's distillation stage, warm-ups) happens inside those steps,
and every logged loss must be finite with no step skipped. Configs whose teacher is not one of ours
(a diffusers pipeline, an EDM checkpoint) need a stand-in of that kind, built by the test file that
owns such pipelines; this file checks one exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distill.build import build_datamodule
from distill.train import train
from tests.conftest import TINY_UNET, compose_config, train_tiny_teacher
from tests.helpers.paper_configs import PAPER_CONFIGS, REPO, STAND_IN, assert_trained, compressed, stand_in_data

# a reported figure, e.g. "FID 2.06"; where the paper's number could not be checked the header says so
# the first step of a pair-based config waits for a whole shard of ODE solves: a small one here
SMALLER = {"paper_reflow_cifar10": ["method.objective.shard_size=8", "method.objective.ode_steps=2"]}
REPORTED_FIGURE = re.compile(r"(FID|FD|GenEval|CLIP score) \d+\.\d+|figure not verified")
# Each config's stage and warm-up schedules compressed so that a change falls inside TRAIN_STEPS
# batches of 4 (a method whose length is its own, as reflow's rounds, gets TRAIN_STEPS in all).

# What the logs show of each compressed change (ECT logs no stage; its stages change at 10 and 20 all the same).


def test_there_is_a_paper_config_per_reported_row():
    assert len(PAPER_CONFIGS) >= 2


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_header_names_paper_table_and_figure(name):
    header = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "Paper:" in header and "Table" in header
    assert REPORTED_FIGURE.search(header), "the header must quote the reported figure (or say it is not verified)"
    assert "Official code:" in header, "the header must name the official code (and commit) it follows, or say none"
    assert "Differences from the official code" in header, "the header must list what still differs"


def started_elsewhere(name: str) -> list[Path]:
    """Test files other than this one that run ``experiment=<name>``."""
    this = Path(__file__).resolve()
    return [p for p in (REPO / "tests").rglob("test_*.py") if p != this and f"experiment={name}" in p.read_text()]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_trains_30_steps_on_a_tiny_stand_in(name, cache_dir, tmp_path, request):
    probe = compose_config("train", [f"experiment={name}"], tmp_path / "probe")
    if probe.teacher.kind != "checkpoint":  # e.g. a diffusers pipeline: started beside its stand-in builder
        assert started_elsewhere(name), f"paper config {name} (teacher.kind={probe.teacher.kind}) is started by no test"
        return
    data = stand_in_data(probe, tmp_path, request)
    dm = build_datamodule(compose_config("train", [f"experiment={name}", *data, *STAND_IN], tmp_path / "probe2"))
    spec = {**TINY_UNET, "num_classes": dm.num_classes} if probe.dataset.get("class_folders") else TINY_UNET
    train_tiny_teacher(tmp_path / "teacher", dm.train_tensor(), spec, steps=2)
    cfg = compose_config(
        "train",
        [
            f"experiment={name}",
            *data,
            f"teacher.path={tmp_path / 'teacher'}",
            *STAND_IN,
            *SMALLER.get(name, []),
            *compressed(name),
        ],
        tmp_path / "run",
    )
    train(cfg)
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"}
    assert all(r["value"] == r["value"] for r in rows)
    assert_trained(tmp_path / "run", name)
