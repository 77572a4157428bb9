"""What every paper-config test shares: the stand-in overrides, the schedule compression and the trained-run check."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tests.helpers.images import image_folder

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
    # the generator joins at step 10, the GAN at 20
    "paper_sida_cifar10": ["method.objective.generator_start_step=10", "method.objective.gan_start_step=20"],
}


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
    "paper_sida_cifar10": lambda c: (
        len(c["student/loss"]) == TRAIN_STEPS - 10  # no generator step before 10
        and math.isclose(c["student/loss"][0], 100 * c["student/sid"][0], rel_tol=1e-4)  # SiD's term alone
        and not math.isclose(c["student/loss"][-1], 100 * c["student/sid"][-1], rel_tol=1e-2)
    ),  # (SiD + GAN) / 2
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


REPO = Path(__file__).resolve().parents[2]


PAPER_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("paper_*.yaml"))


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
