"""distill-table: rows from results.json files, aggregated over seeds, with a plot."""

import json

import pytest
from omegaconf import OmegaConf

from distill.evaluation.runner import FLOW_MAP_METRIC
from distill.table import aggregate, collect_runs, final_rows, main, plot_quality_vs_nfe


def write_run(root, method, dataset, seed, rows):
    run = root / f"{method}-{dataset}-{seed}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {"method": {"name": method}, "dataset": {"name": dataset}, "seed": seed}, run / ".hydra" / "config.yaml"
    )
    (run / "results.json").write_text(json.dumps(rows))


def row(model, sampler, nfe, value, step, metric="sw"):
    return {
        "model": model,
        "sampler": sampler,
        "nfe": nfe,
        "metric": metric,
        "value": value,
        "num_samples": 10,
        "step": step,
    }


def test_table_aggregates_seeds_and_keeps_last_evaluation(tmp_path):
    for seed, value in [(0, 1.0), (1, 3.0)]:
        write_run(
            tmp_path / "runs",
            "progressive",
            "gmm",
            seed,
            [
                row("teacher", "euler", 2, 5.0 + seed, 0),
                row("student", "progressive", 2, 99.0, 10),  # an earlier evaluation: superseded
                row("student", "progressive", 2, value, 20),
            ],
        )
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| progressive | progressive | 2 | 2.0000 ± 1.0000 | 2 | 20 |" in table
    assert "| teacher | euler | 2 | 5.5000 ± 0.5000 | 2 | - |" in table
    rows = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert {(r["method"], r["dataset"], r["seed"]) for r in rows} >= {("teacher", "gmm", 0), ("progressive", "gmm", 1)}
    assert all(r["value"] != 99.0 for r in rows)
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 1000


def digits_rows(seed):
    """Main, collapse and memory rows of one digits run, as the scorer and a memory callback write them."""
    rows = []
    for model, sampler in [("teacher", "euler"), ("student", "dmd")]:
        for nfe in (1, 2):
            student = model == "student"
            tv, recall = (0.1 * nfe + 0.2 * seed, 0.5 + seed) if student else (0.02, 0.5)
            rows += [
                row(model, sampler, nfe, 3.0 / nfe, 50, "fd_digits"),
                row(model, sampler, nfe, tv, 50, "class_tv"),
                row(model, sampler, nfe, 1.0, 50, "classes_covered"),
                row(model, sampler, nfe, recall, 50, "recall"),
                row(model, sampler, nfe, 0.9, 50, "precision"),
            ]
    return rows + [
        row("student", "dmd", 0, 100.0 + 10 * seed, 50, "peak_memory_mb"),
        row("student", "dmd", 0, 8.0, 50, "model_memory_mb"),
    ]


def test_table_has_mode_coverage_and_memory_sections_apart_from_quality(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs", "dmd", "digits", seed, digits_rows(seed))
    write_run(
        tmp_path / "runs",
        "progressive",
        "gmm",
        0,
        [row("student", "progressive", 1, 0.5, 5), row("student", "progressive", 1, 0.7, 5, "recall")],
    )
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "benchmark.md").read_text()
    quality, rest = table.split("## Mode coverage")
    coverage, memory = rest.split("## Memory")
    # The quality table is the main metric only: no collapse or memory rows, no NFE-0 row.
    assert "### digits (fd_digits, lower is better)" in quality and "### gmm (sw, lower is better)" in quality
    assert "| dmd | dmd | 2 | 1.5000 ± 0.0000 | 2 | 50 |" in quality
    assert not any(m in quality for m in ("class_tv", "recall", "peak_memory_mb", "| 0 |"))
    # Coverage: one column per collapse metric present, mean ± std over the two seeds.
    assert "| model | sampler | NFE | class_tv | classes_covered | recall | precision | seeds |" in coverage
    assert (
        "| teacher | euler | 1 | 0.0200 ± 0.0000 | 1.0000 ± 0.0000 | 0.5000 ± 0.0000 | 0.9000 ± 0.0000 | 2 |"
        in coverage
    )
    assert "| dmd | dmd | 2 | 0.3000 ± 0.1000 | 1.0000 ± 0.0000 | 1.0000 ± 0.5000 | 0.9000 ± 0.0000 | 2 |" in coverage
    assert coverage.index("| teacher | euler | 2 |") < coverage.index("| dmd | dmd | 1 |")
    assert "| model | sampler | NFE | recall | seeds |" in coverage  # gmm: recall only
    assert "| progressive | progressive | 1 | 0.7000 ± 0.0000 | 1 |" in coverage
    assert "fd_digits" not in coverage
    assert "| digits | dmd | 105.0 ± 5.0 | 8.0 ± 0.0 | 2 |" in memory
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 1000


def test_quality_plot_ignores_collapse_and_memory_rows(tmp_path):
    write_run(tmp_path / "runs", "dmd", "digits", 0, digits_rows(0))
    agg = aggregate(final_rows(collect_runs([tmp_path / "runs"])))
    assert plot_quality_vs_nfe(agg, tmp_path / "q.png").stat().st_size > 1000
    only_extra = [a for a in agg if a["metric"] in ("recall", "peak_memory_mb")]
    assert plot_quality_vs_nfe(only_extra, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_table_label_keeps_one_method_in_two_setups_apart(tmp_path):
    write_run(tmp_path / "runs", "bezier", "digits", 0, [row("student", "bezier", 1, 2.0, 9, "fd_digits")])
    fresh = tmp_path / "fresh" / "run"
    (fresh / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {"method": {"name": "bezier"}, "dataset": {"name": "digits"}, "seed": 0, "table_label": "${method.name}_fresh"},
        fresh / ".hydra" / "config.yaml",
    )
    (fresh / "results.json").write_text(json.dumps([row("student", "bezier", 1, 3.0, 9, "fd_digits")]))
    agg = aggregate(final_rows(collect_runs([tmp_path / "runs", tmp_path / "fresh"])))
    assert {(a["method"], a["mean"]) for a in agg} == {("bezier", 2.0), ("bezier_fresh", 3.0)}


def test_table_grows_from_its_own_json_without_the_old_runs(tmp_path):
    for seed in (0, 1):
        write_run(
            tmp_path / "old",
            "dmd",
            "digits",
            seed,
            [row("teacher", "euler", 1, 9.0, 0, "fd_digits"), row("student", "dmd", 1, 1.0 + seed, 50, "fd_digits")],
        )
    main([str(tmp_path / "old"), "--out", str(tmp_path / "out")])
    write_run(tmp_path / "new", "pcm", "digits", 0, [row("student", "pcm", 1, 4.0, 50, "fd_digits")])
    previous = tmp_path / "out" / "benchmark.json"
    main([str(previous), str(tmp_path / "new"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| dmd | dmd | 1 | 1.5000 ± 0.5000 | 2 | 50 |" in table  # both seeds survive the round trip
    assert "| teacher | euler | 1 | 9.0000 ± 0.0000 | 2 | - |" in table
    assert "| pcm | pcm | 1 | 4.0000 ± 0.0000 | 1 | 50 |" in table
    assert len(json.loads(previous.read_text())) == 5  # two teacher rows (one per seed), three students


def test_a_table_grown_from_json_keeps_the_training_curve_plot(tmp_path):
    curve = [row("student", "cd", 1, 1.0 / step, step, FLOW_MAP_METRIC) for step in (10, 20, 30)]
    write_run(tmp_path / "old", "cd", "digits", 0, curve)
    main([str(tmp_path / "old"), "--out", str(tmp_path / "out")])
    plot = tmp_path / "out" / "flow_map_error.png"
    drawn = plot.read_bytes()
    main([str(tmp_path / "out" / "benchmark.json"), "--out", str(tmp_path / "out")])  # final rows only
    assert plot.read_bytes() == drawn
    assert "| cd | cd | 1 | 0.0333 ± 0.0000 | 1 | 30 |" in (tmp_path / "out" / "benchmark.md").read_text()


def test_table_refuses_a_json_that_it_did_not_write(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"fd": 1.0}))
    with pytest.raises(SystemExit, match="not a benchmark.json"):
        main([str(other), "--out", str(tmp_path / "out")])
    other.write_text("{broken")
    with pytest.raises(SystemExit, match="not a readable benchmark.json"):
        main([str(other), "--out", str(tmp_path / "out")])
