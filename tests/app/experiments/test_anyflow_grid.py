"""experiments/anyflow_grid.py: one AnyFlow run scored at one NFE on grids of several shifts."""

from __future__ import annotations

import re

import pytest

from distill.core.errors import ConfigError
from tests.helpers.experiments import load_experiment
from tests.helpers.runs import run


def test_each_shift_moves_the_grid_and_is_scored_against_the_asked_split(cache_dir, tmp_path, capsys) -> None:
    grid = load_experiment("anyflow_grid")
    run_dir = run(tmp_path / "anyflow", "method=anyflow", "method.objective.stage2_start=1")
    args = [f"run_dir={run_dir}", "nfe=2", "shifts=1,0.3", f"cache={cache_dir}"]
    scores = {}
    for split in ("train", "report"):
        grid.main([*args, f"split={split}"])
        rows = re.findall(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", capsys.readouterr().out, re.M)
        assert [(shift, middle) for shift, middle, _ in rows] == [("1", "0.500"), ("0.3", "0.231")]
        scores[split] = [float(fd) for *_, fd in rows]
    assert scores["train"] != scores["report"]  # the same samples against another reference
    assert scores["train"][0] != scores["train"][1]  # another grid, other samples
    with pytest.raises(ConfigError, match="has none; use split=train"):
        grid.main([*args, "split=validation"])  # digits has no validation split
    with pytest.raises(SystemExit, match="anyflow runs"):
        grid.main([f"run_dir={run(tmp_path / 'cd', 'method=consistency')}", "shifts=1", f"cache={cache_dir}"])
