"""experiment=reflow_distill_digits: the table's one-step distillation, of the 2-RF instead of the teacher."""

from __future__ import annotations

import json
import shutil

from distill.train import train
from tests.conftest import QUICK_RUN_ONE_NFE, compose_config


def test_experiment_distils_the_2rf_as_distill_direct_does_the_teacher(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=reflow_distill_digits"], tmp_path)
    direct = compose_config("train", ["experiment=bench_digits", "method=distill_direct"], tmp_path)
    assert cfg.teacher.path == str(cache_dir / "teachers" / "digits_2rf")
    assert cfg.method == direct.method and cfg.train == direct.train and cfg.eval == direct.eval
    assert cfg.table_label == "reflow_2rf_distill" and direct.table_label == "distill_direct"


def test_experiment_runs_on_a_2rf_stand_in(cache_dir, tmp_path):
    # The tiny digits teacher under the name `make teacher-reflow` writes.
    shutil.copytree(cache_dir / "teachers" / "digits", cache_dir / "teachers" / "digits_2rf", dirs_exist_ok=True)
    cfg = compose_config("train", ["experiment=reflow_distill_digits", *QUICK_RUN_ONE_NFE], tmp_path)
    train(cfg)
    rows = json.loads((tmp_path / "results.json").read_text())
    scored = [(r["model"], r["nfe"]) for r in rows if r["metric"] == "fd_digits"]
    assert scored == [("student", 1)]
