"""Staged pipelines: a run starts its student from another run's checkpoint (``init_from=...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_module, build_teacher
from distill.errors import ConfigError
from distill.train import train
from tests.conftest import compose_config
from tests.helpers.runs import TINY_RUN, run


@pytest.fixture(scope="module")
def pcm_run(cache_dir, tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("pcm"), "method=pcm")


def student_state(run_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def module_for(tmp_path: Path, *overrides: str):
    cfg = compose_config("train", [*TINY_RUN, *overrides], tmp_path / "second")
    return build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))


def assert_equal_state(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize(("ema", "prefix"), [("true", "ema.copies.0."), ("false", "student.")])
def test_second_method_starts_bit_identical_to_the_first_runs_student(pcm_run, tmp_path, capsys, ema, prefix):
    expected, raw = student_state(pcm_run, prefix), student_state(pcm_run, "student.")
    if ema == "true":
        assert any(not torch.equal(v, raw[k]) for k, v in expected.items())  # the EMA is not the raw student
    module = module_for(tmp_path, "method=consistency", f"init_from={pcm_run}", f"init_from_ema={ema}")
    assert_equal_state(module.student, expected)
    assert_equal_state(module.ema.copies[0], expected)  # the new run's EMA starts there too
    assert not any(k.startswith("target_net") for k in module.method.state_dict())  # aux nets start afresh
    assert (
        f"init_from: student starts from {pcm_run / 'checkpoints' / 'last.ckpt'} (method=pcm" in capsys.readouterr().out
    )


def test_staged_run_trains_end_to_end_and_records_its_source(pcm_run, tmp_path):
    cfg = compose_config("train", [*TINY_RUN, "method=consistency", f"init_from={pcm_run}"], tmp_path / "second")
    rows = train(cfg)
    assert cfg.init_from == str(pcm_run)  # saved with the run's config
    assert {r.metric for r in rows} >= {"model_memory_mb", "peak_memory_mb"}


def test_plain_student_can_start_meanflow(pcm_run, tmp_path):
    expected = student_state(pcm_run, "ema.copies.0.")
    state = module_for(tmp_path, "method=meanflow", f"init_from={pcm_run}").student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())  # plus MeanFlow's new time input


def test_missing_or_unfinished_runs_and_corrupt_files_name_the_fix(cache_dir, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01 definitely not a zip file")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "has no checkpoints/last.ckpt"),
        (garbage, "not a readable checkpoint"),
    ]
    for source, needle in cases:
        cfg = compose_config("train", [*TINY_RUN, f"init_from={source}"], tmp_path / "run")
        with pytest.raises(ConfigError, match=needle) as err:
            train(cfg)
        assert str(source) in str(err.value) and "init_from=<run dir of a finished distill-train run>" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_another_architecture_is_refused_naming_both_runs(cache_dir, tmp_path):
    moons = run(tmp_path / "moons", "dataset=moons", "method=pcm")
    with pytest.raises(ConfigError, match=r"(?s)method=pcm, dataset=moons.*missing.*unexpected") as err:
        module_for(tmp_path, "dataset=digits", f"init_from={moons}")
    assert "this run (method=progressive, dataset=digits)" in str(err.value) and "Fix:" in str(err.value)
