"""Every paper config (conf/experiment/paper_*.yaml) composes, names its paper figure, and trains.

The real runs need GPUs and days; here each one trains 30 optimizer steps on CPU with a tiny stand-in
teacher of the same kind, its stage schedules compressed so that a stage or phase change (ECT's
stages, rCM's sCM-only warm-up, reflow's distillation stage, warm-ups) happens inside those steps,
and every logged loss must be finite with no step skipped. Configs whose teacher is not one of ours
(a diffusers pipeline, an EDM checkpoint) need a stand-in of that kind, built by the test file that
owns such pipelines; this file checks one exists.
"""

from __future__ import annotations

import csv
import json
import math
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
TRAIN_STEPS = 30
STAND_IN = [
    "hardware=cpu",
    "debug=fast",
    "train.fast_dev_run=false",
    f"train.max_steps={TRAIN_STEPS}",
    "train.images=null",
    "train.log_every_n_steps=1",
    "eval.metric=sw",
    "eval.num_samples=8",
    "eval.batch_size=8",
    "eval.teacher_nfes=[1]",
    "eval.every_n_steps=0",
    "train.global_batch_size=4",
]
# Each config's stage and warm-up schedules compressed so that a change falls inside TRAIN_STEPS
# batches of 4 (a method whose length is its own, as reflow's rounds, gets TRAIN_STEPS in all).
COMPRESSED = {
    "paper_ect_cifar10": ["method.objective.images_per_stage=40"],  # stages at steps 10, 20
    "paper_scm_cifar10": ["method.objective.tangent_warmup=10"],
    "paper_scm_imagenet64": ["method.objective.tangent_warmup=10"],
    "paper_rcm_t2i": ["method.objective.terms.scm.tangent_warmup=10"],  # DMD joins at step 10
    "paper_meanflow_cifar10": ["train.lr_warmup_steps=10"],
    "paper_dmd2_imagenet64": ["train.lr_warmup_steps=10"],
    "paper_arcflow_qwen_image": ["method.objective.teacher_mix_steps=15", "train.lr_warmup_steps=10"],
    "paper_arcflow_flux_dev": ["method.objective.teacher_mix_steps=15", "train.lr_warmup_steps=10"],
    "paper_reflow_cifar10": [
        "method.objective.steps_per_round=15",
        "method.objective.distill_steps=15",
        "method.objective.stage_warmup_steps=5",
    ],  # each stage warms up within the run
    "paper_instaflow_sd": ["method.objective.steps_per_round=15", "method.objective.distill_steps=15"],
}

# What the logs show of each compressed change (ECT logs no stage; its stages change at 10 and 20 all the same).
CHANGED = {
    "paper_scm_cifar10": lambda c: c["student/tangent_ratio"][0] < 1 == c["student/tangent_ratio"][-1],
    "paper_scm_imagenet64": lambda c: c["student/tangent_ratio"][0] < 1 == c["student/tangent_ratio"][-1],
    "paper_rcm_t2i": lambda c: len(c["fake_score/loss"]) == TRAIN_STEPS - 10,  # no DMD phase while sCM warms up
    "paper_meanflow_cifar10": lambda c: c["student/lr"][0] == 0 < c["student/lr"][-1],
    "paper_dmd2_imagenet64": lambda c: c["student/lr"][0] == 0 < c["student/lr"][-1],
    "paper_arcflow_qwen_image": lambda c: c["student/teacher_share"][0] == 1 and c["student/teacher_share"][-1] == 0,
    "paper_arcflow_flux_dev": lambda c: c["student/teacher_share"][0] == 1 and c["student/teacher_share"][-1] == 0,
    "paper_reflow_cifar10": lambda c: len(set(c["student/reflow_stage"])) == 2,
    "paper_instaflow_sd": lambda c: len(set(c["student/reflow_stage"])) == 2,
}


def compressed(name: str) -> list[str]:
    return COMPRESSED.get(name, [])


def assert_trained(run_dir: Path, name: str | None = None, steps: int = TRAIN_STEPS) -> dict[str, list[float]]:
    """Every batch of the run logged (``train.log_every_n_steps=1``), none skipped, every loss finite,
    and the compressed stage change of ``name`` seen in the logs; returns the logged columns, one value
    per batch where the column was logged."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/skipped_steps")]
    assert len(rows) == steps, f"{len(rows)} batches logged, expected {steps}"
    assert [float(r["train/skipped_steps"]) for r in rows] == [0.0] * steps, "a step was skipped"
    columns = {k: [float(r[k]) for r in rows if r[k]] for k in rows[0]}
    losses = {k: v for k, v in columns.items() if k.endswith("loss")}
    assert losses, f"no loss logged: {sorted(columns)}"
    bad = {k: v for k, v in losses.items() if not all(math.isfinite(x) for x in v)}
    assert not bad, f"non-finite losses: {sorted(bad)}"
    if name in CHANGED:
        assert CHANGED[name](columns), f"{name}: the compressed schedule did not change within {steps} steps"
    return columns


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
