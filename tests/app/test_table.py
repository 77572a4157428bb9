"""distill-table: rows from results.json files, aggregated over seeds, with a plot."""

import json

from omegaconf import OmegaConf

from distill.table import main


def write_run(root, method, dataset, seed, rows):
    run = root / f"{method}-{dataset}-{seed}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"method": {"name": method}, "dataset": {"name": dataset}, "seed": seed}, run / ".hydra" / "config.yaml")
    (run / "results.json").write_text(json.dumps(rows))


def row(model, sampler, nfe, value, step):
    return {"model": model, "sampler": sampler, "nfe": nfe, "metric": "sw", "value": value, "num_samples": 10,
            "step": step}


def test_table_aggregates_seeds_and_keeps_last_evaluation(tmp_path):
    for seed, value in [(0, 1.0), (1, 3.0)]:
        write_run(tmp_path / "runs", "progressive", "gmm", seed, [
            row("teacher", "euler", 2, 5.0 + seed, 0),
            row("student", "progressive", 2, 99.0, 10),     # an earlier evaluation: superseded
            row("student", "progressive", 2, value, 20),
        ])
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| progressive | progressive | 2 | 2.0000 ± 1.0000 | 2 | 20 |" in table
    assert "| teacher | euler | 2 | 5.5000 ± 0.5000 | 2 | - |" in table
    rows = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert {(r["method"], r["dataset"], r["seed"]) for r in rows} >= {("teacher", "gmm", 0), ("progressive", "gmm", 1)}
    assert all(r["value"] != 99.0 for r in rows)
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 1000
