"""The entry points end to end: every method x dataset composes and runs; errors name the fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from distill.build import build_datamodule, build_eval_spec, build_scorer, build_teacher
from distill.data import DatasetError
from distill.errors import ConfigError
from distill.evaluation.results import MEMORY_METRICS
from distill.evaluation.runner import evaluate_teacher
from distill.teachers import TeacherCheckpointError
from distill.train import train
from tests.conftest import TINY_UNET, compose_config, train_tiny_teacher
from tests.helpers.images import image_folder
from tests.helpers.runs import run

REPO = Path(__file__).resolve().parents[2]
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
FAST = ["debug=fast"]


def dataset_overrides(name: str, tmp_path: Path, request) -> list[str]:
    """Overrides that give ``name`` a teacher; image sets get a tiny one trained here."""
    if name == "gmm":
        return ["dataset=gmm", "teacher=gmm_exact", "student=mlp"]
    if name in ("image_folder", "cifar10"):
        if name == "image_folder":
            data = [f"dataset.path={image_folder(tmp_path)}", "dataset.resolution=8"]
        else:
            data = [f"dataset.root={request.getfixturevalue('fake_cifar_root')}"]
        dm = build_datamodule(compose_config("train", [f"dataset={name}", *data], tmp_path / "probe"))
        train_tiny_teacher(tmp_path / "teacher", dm.train_tensor(), TINY_UNET, steps=2)
        # No Inception weights here: score pixels with sliced Wasserstein instead of FID.
        return [
            f"dataset={name}",
            *data,
            f"teacher.path={tmp_path / 'teacher'}",
            "eval.metric=sw",
            "train.batch_size=4",
        ]
    return [f"dataset={name}"]


DATASETS = ["digits", "gmm", "moons", "rings", "checkerboard", "image_folder", "cifar10"]
# make test: every method on one image set of each kind and the analytic 2-D set (re-tuned variants
# such as pcm_adv on digits only), every dataset with
# two methods; the rest of the matrix (the other 2-D toys and CIFAR-10 share those code paths) in
# make test-slow, so the suite stays under its ten minutes as methods are added.
FAST_DATASETS, FAST_METHODS = ("digits", "gmm", "image_folder"), ("progressive", "dmd2")


def variant_of(method: str) -> str | None:
    """The method a config only re-tunes (its defaults list names it), else None."""
    text = (REPO / "conf" / "method" / f"{method}.yaml").read_text()
    return next((m for m in METHODS if re.search(rf"^  - {re.escape(m)}$", text, re.MULTILINE)), None)


def continues(method: str) -> str | None:
    """The method whose finished run a run of ``method`` starts from (``method.continues``), else None."""
    return yaml.safe_load((REPO / "conf" / "method" / f"{method}.yaml").read_text()).get("continues")


def in_make_test(method: str, dataset: str) -> bool:
    if method in FAST_METHODS:
        return True
    # a re-tuned variant shares its base's code paths, and a continuing method (two runs) its first
    # method's: digits is enough in make test
    return dataset == "digits" if variant_of(method) or continues(method) else dataset in FAST_DATASETS


def method_dataset_matrix() -> list:
    return [
        pytest.param(method, dataset, marks=() if in_make_test(method, dataset) else pytest.mark.slow)
        for dataset in DATASETS
        for method in METHODS
    ]


@pytest.mark.parametrize(("method", "dataset"), method_dataset_matrix())
def test_every_method_and_dataset_runs_fast_dev_run(compose_train, tmp_path, request, method, dataset):
    overrides = dataset_overrides(dataset, tmp_path, request)
    first = continues(method)  # TCM: a two-step run of the method it continues, then init_from
    init = [f"init_from={run(tmp_path / 'first', f'method={first}', *overrides)}"] if first else []
    cfg = compose_train(f"method={method}", *FAST, *overrides, *init)
    rows = train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["model"] for r in results} == {"teacher", "student"}
    nfes = set(cfg.method.get("student_nfes") or [1, 2, 4])  # a method config may state its own
    assert {r["nfe"] for r in results if r["model"] == "student" and r["metric"] not in MEMORY_METRICS} == nfes
    assert {r["metric"] for r in results if r["nfe"] == 0} == set(MEMORY_METRICS)
    assert all(r["value"] == r["value"] and r["value"] >= 0 for r in results)  # finite, non-negative
    assert len(rows) == len(results)
    assert list((Path(cfg.paths.output_dir) / "samples").glob("student_*_nfe2_*.png"))


def test_a_continuing_method_without_init_from_names_the_run_it_needs(compose_train):
    with pytest.raises(ConfigError, match=r"method=tcm continues a finished method=ect run.*init_from=<its run dir>"):
        train(compose_train("method=tcm", *FAST))


def test_resolution_mismatch_is_refused_before_training(compose_train, tmp_path):
    cfg = compose_train(
        *FAST,
        "dataset=image_folder",
        f"dataset.path={image_folder(tmp_path)}",
        "dataset.resolution=8",
        "eval.metric=sw",
        "teacher.path=${paths.cache}/teachers/digits",
    )
    with pytest.raises(ConfigError, match=r"shape \(1, 8, 8\) but dataset=image_folder has shape \(3, 8, 8\)"):
        train(cfg)


def test_missing_dataset_folder_and_teacher_fail_in_process(compose_train, tmp_path):
    with pytest.raises(DatasetError, match="dataset.path"):
        train(compose_train(*FAST, "dataset=image_folder", f"dataset.path={tmp_path}/missing"))
    with pytest.raises(TeacherCheckpointError, match="distill-pretrain"):
        train(compose_train(*FAST, f"teacher.path={tmp_path}/no_teacher"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing a later resume could trip on


def test_evaluation_is_reproducible(compose_train):
    cfg = compose_train(*FAST)
    dm = build_datamodule(cfg)
    teacher, scorer, spec = build_teacher(cfg, dm), build_scorer(cfg, dm, progress=False), build_eval_spec(cfg)
    first, _ = evaluate_teacher(teacher, dm.data_shape, scorer, spec)
    second, _ = evaluate_teacher(teacher, dm.data_shape, scorer, spec)
    assert [r.value for r in first] == [r.value for r in second]
    spec.seed = 1
    third, _ = evaluate_teacher(teacher, dm.data_shape, scorer, spec)
    assert [r.value for r in third] != [r.value for r in first]


def test_wandb_offline_logger_writes_a_local_run(compose_train):
    # two real steps (a fast_dev_run mutes the loggers): config, sample grids, metrics and the results table
    cfg = compose_train(
        "eval=fast", "train.max_steps=2", "logger=wandb", "dataset=gmm", "teacher=gmm_exact", "student=mlp"
    )
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert runs
    assert list(runs[0].rglob("media/images/samples/student/*/nfe2_*.png"))
    tables = list(runs[0].rglob("results*.table.json"))  # the result rows, as a W&B table (and artifact)
    assert tables and '"sw"' in tables[0].read_text() and '"student"' in tables[0].read_text()


def cli(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DISTILL_CACHE=str(cache), WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # 11 s: a Hydra multirun of two jobs
def test_multirun_sweep_from_the_command_line(cache_dir, tmp_path):
    proc = cli(
        [
            "distill.train",
            "-m",
            "seed=0,1",
            *FAST,
            "dataset=gmm",
            "teacher=gmm_exact",
            "student=mlp",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        REPO,
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").rglob("results.json"))
    assert len(results) == 2
    values = [[r for r in json.loads(p.read_text()) if r["metric"] not in MEMORY_METRICS][-1]["value"] for p in results]
    assert values[0] != values[1]  # different seeds, different students


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no_such_key=1"], "+no_such_key"),
        (["teacher.path=/no/teacher/here"], "distill-pretrain"),
    ],
)
def test_bad_input_gives_one_clear_error(cache_dir, tmp_path, args, needle):
    proc = cli(["distill.train", *FAST, f"hydra.run.dir={tmp_path}/run", *args], REPO, cache_dir)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr  # one message, not a stack trace


@pytest.mark.parametrize("scheme", ["fm", "edm"])
def test_pretrain_writes_a_loadable_teacher(cache_dir, tmp_path, scheme):
    from distill.pretrain import pretrain
    from distill.teachers import load_teacher

    cfg = compose_config(
        "pretrain",
        [
            "dataset=moons",
            "net=mlp",
            "train.max_steps=20",
            "progress=false",
            f"scheme={scheme}",
            f"out={tmp_path}/teacher",
        ],
        tmp_path / "run",
    )
    out = pretrain(cfg)
    teacher = load_teacher(out)
    assert teacher.data_shape == (2,) and teacher.meta["scheme"] == scheme
    assert (out / "samples.png").is_file()
    assert torch.isfinite(teacher(torch.randn(3, 2), torch.rand(3))).all()


def test_pretrain_init_from_continues_a_teacher_and_refuses_a_mismatch(cache_dir, tmp_path):
    from distill.pretrain import pretrain
    from distill.teachers import load_teacher

    def run(name, *overrides):
        return compose_config(
            "pretrain",
            ["dataset=moons", "net=mlp", "progress=false", f"out={tmp_path}/{name}", *overrides],
            tmp_path / name,
        )

    start = load_teacher(pretrain(run("start", "train.max_steps=20")))
    # Zero steps of fine-tuning: the sibling is its starting teacher, weight for weight.
    same = load_teacher(pretrain(run("same", "train.max_steps=0", f"init_from={tmp_path}/start")))
    assert same.meta["init_from"] == f"{tmp_path}/start"
    for (name, a), b in zip(start.model.state_dict().items(), same.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A few steps at another seed move it, from there (close), not from scratch (far).
    moved = load_teacher(pretrain(run("moved", "train.max_steps=5", "seed=1", f"init_from={tmp_path}/start")))
    pairs = zip(start.model.state_dict().values(), moved.model.state_dict().values(), strict=True)
    gaps = [(a - b).abs().max() for a, b in pairs]
    assert 0 < max(gaps) < 0.1
    with pytest.raises(ConfigError, match="scheme="):
        pretrain(run("edm", "scheme=edm", f"init_from={tmp_path}/start"))
    with pytest.raises(ConfigError, match="sigma_data="):
        pretrain(run("sigma", "sigma_data=1.0", f"init_from={tmp_path}/start"))
    with pytest.raises(ConfigError, match="conditional=false"):
        pretrain(
            compose_config(
                "pretrain",
                [
                    "dataset=digits",
                    "conditional=true",
                    f"out={tmp_path}/cond",
                    f"init_from={cache_dir}/teachers/digits",
                ],
                tmp_path / "cond",
            )
        )


def test_evaluate_reloads_a_run_and_reproduces_its_student_rows(compose_train, tmp_path):
    from distill.evaluate import evaluate

    cfg = compose_train(
        "dataset=gmm",
        "teacher=gmm_exact",
        "student=mlp",
        "eval=fast",
        "eval.teacher=false",
        "method.objective.steps_per_round=2",
        "method.objective.start_steps=4",
    )
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({k: cfg[k] for k in cfg if k != "hydra"}, run_dir / ".hydra" / "config.yaml", resolve=True)
    trained = {r.nfe: r.value for r in train(cfg) if r.metric not in MEMORY_METRICS}
    eval_cfg = compose_config(
        "evaluate",
        ["dataset=gmm", "teacher=gmm_exact", "eval=fast", "progress=false", f"run_dir={run_dir}"],
        tmp_path / "eval",
    )
    rows = evaluate(eval_cfg)
    assert {r.nfe: r.value for r in rows if r.model == "student"} == trained
    assert any(r.model == "teacher" for r in rows)
    with open_dict(eval_cfg):
        eval_cfg.eval.teacher = False  # the student alone
    assert {r.model for r in evaluate(eval_cfg)} == {"student"}
