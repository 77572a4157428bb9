"""experiments/reflow_budget.py: one-step scores grouped by source flow and distillation budget."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers.experiments import load_experiment


def load_script():
    return load_experiment("reflow_budget")


def write_run(root, method, teacher, steps, seed, scores):
    """A run dir whose student scored ``scores`` [(step, value)] at 1 NFE (and 50.0 at 2 NFE)."""
    run = root / f"{method}-{Path(teacher).name}-{steps}-{seed}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {"method": {"name": method}, "teacher": {"path": teacher}, "train": {"max_steps": steps}, "seed": seed},
        run / ".hydra" / "config.yaml",
    )
    rows = [
        {
            "model": "student",
            "sampler": method,
            "nfe": nfe,
            "metric": "fd_digits",
            "value": value,
            "num_samples": 10,
            "step": step,
        }
        for nfe, step, value in [(1, *s) for s in scores] + [(2, steps, 50.0)]
    ]
    (run / "results.json").write_text(json.dumps(rows))


def test_scores_group_by_source_and_budget_keep_the_final_step_and_skip_other_methods(tmp_path):
    runs = tmp_path / "runs"
    for seed, (direct, reflowed) in enumerate([(4.0, 3.0), (5.0, 3.5)]):
        write_run(runs, "distill_direct", "/cache/teachers/digits", 100, seed, [(50, 9.0), (100, direct)])
        write_run(runs, "distill_direct", "/cache/teachers/digits_2rf", 100, seed, [(100, reflowed)])
    write_run(runs, "distill_direct", "/cache/teachers/digits", 400, 0, [(400, 2.0)])
    write_run(runs, "reflow", "/cache/teachers/digits", 100, 0, [(100, 1.0)])  # not a distill_direct run

    module = load_script()
    scores = module.one_step_scores(runs, "fd_digits")
    assert scores == {
        ("digits", 100): {0: 4.0, 1: 5.0},
        ("digits_2rf", 100): {0: 3.0, 1: 3.5},
        ("digits", 400): {0: 2.0},
    }

    module.main([str(runs), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "reflow_budget.md").read_text()
    assert "| digits | 100 | 4.00 | 5.00 | 4.50 | 4.00-5.00 |" in table
    assert "| digits_2rf | 100 | 3.00 | 3.50 | 3.25 | 3.00-3.50 |" in table
    assert "| digits | 400 | 2.00 |  | 2.00 | 2.00-2.00 |" in table
    assert (tmp_path / "out" / "reflow_budget.png").stat().st_size > 1000


def test_an_empty_sweep_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="make reflow-budget"):
        load_script().main([str(tmp_path), "--out", str(tmp_path / "out")])
