"""Config mistakes and bad inputs fail in the first second with one message that names the fix."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from distill import train as train_app
from distill.build import build_method, build_optimizer
from distill.config_schema import validate_train_config
from distill.data import DatasetError
from distill.errors import CheckpointError, ConfigError, DivergenceError, friendly_errors
from distill.teachers import TeacherCheckpointError
from tests.conftest import CONF_DIR

REPO = Path(__file__).resolve().parents[2]


def stems(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_every_shipped_config_validates():
    """Every option of every group, and every experiment (each method goes through train() in
    test_train_app already); options are combined, one per group and config, since composing is the cost."""
    groups = {g: stems(g) for g in ("dataset", "hardware", "logger", "eval", "student", "teacher")}
    combos = [{g: names[i % len(names)] for g, names in groups.items()} for i in range(max(map(len, groups.values())))]
    for combo in combos:
        if combo["teacher"] == "gmm_exact":
            combo["student"] = "mlp"  # the analytic teacher has no network to copy (refused: see below)
    overrides = [[f"{g}={name}" for g, name in combo.items()] for combo in combos]
    overrides += [[f"experiment={e}"] for e in stems("experiment")] + [["debug=fast"]]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        configs = [compose("train", o) for o in overrides]
    for cfg in configs:
        if OmegaConf.is_missing(cfg.dataset, "path"):
            cfg.dataset.path = "/data/images"  # image_folder's path is ??? until a user sets it
        validate_train_config(cfg)


MISTAKES = [
    (["+no_such_key=1"], "unknown config key no_such_key: the top level takes dataset, teacher, student, method"),
    (["+train.max_step=5"], "unknown config key train.max_step: train takes batch_size, max_steps,"),
    (
        ["+method.lr=1e-3"],
        "unknown config key method.lr: method takes name, objective, optimizer, ema_decays, grad_clip",
    ),
    (["train.max_steps=ten"], "train.max_steps='ten' must be an integer"),
    (["train.batch_size=0"], "train.batch_size=0 must be >= 1"),
    (["method.ema_decays=[0.99,1.5]"], "method.ema_decays=1.5 must be < 1.0"),
    (["hardware.precision=fp16"], "hardware.precision='fp16' is not a valid choice; choose one of 64-true, 32-true,"),
    (["eval.teacher_samplers=[rk4]"], "eval.teacher_samplers='rk4' is not a valid choice; choose one of euler, heun"),
    (["logger.kind=mlflow"], "logger.kind='mlflow' is not a valid choice; choose one of wandb, csv, tensorboard"),
    (["dataset=image_folder"], "dataset.path is required but not set (???): pass dataset.path=<value>"),
    (["dataset=moons", "eval.metric=fd_digits"], "eval.metric=fd_digits scores 8x8 digits, not dataset=moons"),
    (["dataset=moons", "eval.metric=fid"], "eval.metric=fid needs images, and dataset=moons is 2-D points"),
    (["dataset=gmm", "teacher=gmm_exact"], "teacher=gmm_exact has no network for student=copy_of_teacher to copy"),
]


@pytest.mark.parametrize(("overrides", "needle"), MISTAKES)
def test_a_config_mistake_fails_before_anything_is_built(compose_train, tmp_path, monkeypatch, overrides, needle):
    monkeypatch.setattr(train_app, "build_datamodule", lambda cfg: pytest.fail("built data for a bad config"))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        train_app.train(compose_train(*overrides))
    assert not (tmp_path / "run").exists()


def test_the_cli_prints_the_mistake_in_one_line(cache_dir, tmp_path, monkeypatch, capsys):
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["distill-train", "+train.max_step=5", f"hydra.run.dir={tmp_path}/run"])
    with pytest.raises(SystemExit) as stopped:
        train_app.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "error: unknown config key train.max_step: train takes" in err
    assert "Traceback" not in err
    assert not {"checkpoints", "results.json"} & {p.name for p in (tmp_path / "run").iterdir()}


def test_a_bad_method_value_is_one_line_naming_its_key_and_exit_2(cache_dir, tmp_path, monkeypatch, capsys):
    GlobalHydra.instance().clear()
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "distill-train",
            "dataset=gmm",
            "teacher=gmm_exact",
            "student=mlp",
            "method=scd",
            "method.objective.jvp=foo",
            "logger=csv",
            f"hydra.run.dir={tmp_path}/run",
        ],
    )
    with pytest.raises(SystemExit) as stopped:
        train_app.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err == "error: method.objective.jvp='foo'; choose one of ('exact', 'finite_difference')\n"


METHOD_MISTAKES = [  # what Hydra's instantiate raises, as one line that starts with the key to fix
    (["method=rcm", "method.objective.terms.scm.jvp=foo"], "method.objective.terms.scm.jvp='foo'; choose one of"),
    (
        ["method=scd", "+method.objective.jvp_mode=exact"],
        "method.objective: SCM.__init__() got an unexpected keyword argument 'jvp_mode'",
    ),
    (
        ["method=scd", "method.objective._target_=distill.methods.SCMM"],
        "method.objective._target_=distill.methods.SCMM cannot be imported: check its module and class name",
    ),
    (
        ["method=scd", "method.optimizer._target_=torch.optim.Adamm"],
        "method.optimizer._target_=torch.optim.Adamm cannot",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), METHOD_MISTAKES)
def test_a_method_that_cannot_be_built_is_a_one_line_config_error(overrides, message):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides)
    with pytest.raises(ConfigError) as refused:
        build_method(cfg)
        build_optimizer(cfg)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("c"),
        CheckpointError("k"),
        DivergenceError("d"),
        DatasetError("s"),
        TeacherCheckpointError("t"),
        FileNotFoundError("inception weights"),
    ],
)
def test_every_user_error_is_one_line_and_exit_2(error, capsys):
    @friendly_errors
    def main() -> None:
        raise error

    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2 and capsys.readouterr().err == f"error: {error}\n"


def test_bad_inputs_write_nothing_a_resume_would_trip_on(compose_train, tmp_path):
    cases = [
        (["eval.metric=fid", f"eval.inception_weights={tmp_path}/nowhere.pth"], FileNotFoundError, "Inception weights"),
        ([f"ckpt_path={tmp_path}/nowhere.ckpt"], FileNotFoundError, "nowhere.ckpt does not exist"),
        (["ckpt_path=last"], ConfigError, "ckpt_path=last, but"),
    ]
    for overrides, kind, needle in cases:
        with pytest.raises(kind, match=needle):
            train_app.train(compose_train(*overrides))
        run_dir = tmp_path / "run"
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
