"""Bring an EDM checkpoint: tiny EDM-format pickles at the digits shape distil end to end with
``teacher=edm teacher.path=<pkl>``, unconditional and class-conditional, and no code from them runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.evaluation.results import MEMORY_METRICS
from distill.teachers.edm_pickle import EDMPickleError
from distill.train import train
from tests.teachers.edm_pickles import tiny_edm, write_edm_pickle


def edm_pickle(tmp_path: Path, kind: str, label_dim: int = 0) -> Path:
    net, kwargs = tiny_edm(kind, channels=1, resolution=8, label_dim=label_dim)
    return write_edm_pickle(tmp_path / f"{kind}.pkl", net, kwargs, tmp_path / "executed")


def rows_of(cfg) -> list[dict]:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def test_edm_pickle_teacher_distils_end_to_end(compose_train, tmp_path):
    path = edm_pickle(tmp_path, "song")
    cfg = compose_train("method=progressive", "debug=fast", "teacher=edm", f"teacher.path={path}")
    train(cfg)
    nfes = {r["nfe"] for r in rows_of(cfg) if r["model"] == "student" and r["metric"] not in MEMORY_METRICS}
    assert nfes == {1, 2, 4}
    assert not (tmp_path / "executed").exists()
    assert list((Path(cfg.paths.cache) / "teachers" / "edm").glob("song-*/teacher.json"))


@pytest.mark.parametrize("kind", ["dhariwal", "edm2"])
def test_class_conditional_edm_teacher_distils_with_labels(compose_train, tmp_path, kind):
    path = edm_pickle(tmp_path, kind, label_dim=10)
    cfg = compose_train("method=progressive", "debug=fast", "teacher=edm", f"teacher.path={path}")
    train(cfg)
    assert {r["model"] for r in rows_of(cfg) if r["metric"] == "class_accuracy"} == {"teacher", "student"}
    assert not (tmp_path / "executed").exists()


def test_guidance_on_an_edm_teacher_is_refused(compose_train, tmp_path):
    path = edm_pickle(tmp_path, "dhariwal", label_dim=10)
    cfg = compose_train("debug=fast", "teacher=edm", f"teacher.path={path}", "teacher.guidance=2")
    with pytest.raises(EDMPickleError, match="without a null class"):
        train(cfg)
