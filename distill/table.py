"""``distill-table``: the comparison table (markdown, JSON, plot) from runs' ``results.json``.

    distill-table outputs/ multirun/ --out experiments/results
    distill-table experiments/results/benchmark.json multirun/new/ --out experiments/results   # add runs

Every row comes from ``results.json`` files and each run's ``.hydra/config.yaml``; nothing is
scraped from logs. Seeds are aggregated as mean +- standard deviation. The quality table and plot
show each dataset's main metric; collapse metrics (class histogram, recall) and training memory
get sections of their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from distill.evaluation.results import MEMORY_METRICS, RESULTS_NAME, ResultRow, load_results
from distill.evaluation.runner import FLOW_MAP_METRIC
from distill.evaluation.scorer import COLLAPSE_METRICS


def format_rows(rows: Iterable[ResultRow], title: str = "") -> str:
    """A plain markdown table of one run's rows (what ``distill-train`` prints at the end)."""
    lines = [f"\n{title}", "", "| model | sampler | NFE | metric | value |", "|---|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.sampler} | {r.nfe} | {r.metric} | {r.value:.4f} |")
    return "\n".join(lines) + "\n"


def collect_runs(roots: Iterable[str | Path]) -> list[dict]:
    """Every ``results.json`` row under ``roots``, tagged with the run's table label, dataset and seed.

    A root that is a ``benchmark.json`` this command wrote contributes its rows as they are, so a
    table can grow by new runs without the old run directories (another machine's, a deleted sweep).
    """
    out = []
    for root in roots:
        if Path(root).is_file():
            out += previous_rows(root)
            continue
        for results in sorted(Path(root).rglob(RESULTS_NAME)):
            run = results.parent
            cfg_path = run / ".hydra" / "config.yaml"
            cfg = OmegaConf.load(cfg_path) if cfg_path.is_file() else OmegaConf.create({})
            # table_label (default: method.name) keeps apart runs of one method in different set-ups.
            method = OmegaConf.select(cfg, "table_label", default=None) or OmegaConf.select(
                cfg, "method.name", default="unknown"
            )
            dataset = OmegaConf.select(cfg, "dataset.name", default="unknown")
            seed = OmegaConf.select(cfg, "seed", default=0)
            steps = OmegaConf.select(cfg, "budget_steps", default=None)
            for row in load_results(results):
                tagged = dict(row, dataset=dataset, seed=seed, run=str(run))
                tagged["method"] = "teacher" if row["model"] == "teacher" else method
                if steps is not None and row["model"] == "student":
                    tagged["budget_steps"] = steps
                out.append(tagged)
    return out


def previous_rows(path: str | Path) -> list[dict]:
    """The rows of a ``benchmark.json``, each under a run key of its own (method, dataset, seed), marked previous."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(
            f"{path}: not a readable benchmark.json ({err}); pass run directories or a file distill-table wrote"
        ) from None
    needed = {"method", "dataset", "seed", "model", "sampler", "nfe", "metric", "value", "step"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and needed <= r.keys() for r in rows):
        raise SystemExit(
            f"{path}: not a benchmark.json (a list of rows with {sorted(needed)}); pass run "
            "directories or a file distill-table wrote"
        )
    return [dict(r, run=f"{path}:{r['method']}:{r['dataset']}:{r['seed']}", previous=True) for r in rows]


def final_rows(rows: list[dict]) -> list[dict]:
    """Keep each run's last evaluation of every (model, sampler, nfe, metric)."""
    last: dict[tuple, dict] = {}
    for r in rows:
        key = (r["run"], r["model"], r["sampler"], r["nfe"], r["metric"])
        if key not in last or r["step"] >= last[key]["step"]:
            last[key] = r
    return list(last.values())


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (dataset, method, sampler, nfe, metric)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    steps: dict[tuple, int] = {}
    seen: dict[tuple, set] = defaultdict(set)
    for r in rows:
        key = (r["dataset"], r["method"], r["sampler"], r["nfe"], r["metric"])
        if r["seed"] in seen[key]:
            continue  # one teacher evaluation per seed, however many methods shared it
        seen[key].add(r["seed"])
        groups[key].append(r["value"])
        steps[key] = r["step"]
    out = []
    for (dataset, method, sampler, nfe, metric), values in sorted(groups.items()):
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "sampler": sampler,
                "nfe": nfe,
                "metric": metric,
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "seeds": len(values),
                "train_steps": steps[(dataset, method, sampler, nfe, metric)],
            }
        )
    return out


def is_quality(metric: str) -> bool:
    """Whether rows of ``metric`` belong in the quality table and plot (the main metric, flow-map error)."""
    return metric not in COLLAPSE_METRICS and metric not in MEMORY_METRICS


def mean_std(a: dict, digits: int = 4) -> str:
    return f"{a['mean']:.{digits}f} ± {a['std']:.{digits}f}"


def model_order(key: tuple) -> tuple:
    """Teacher rows first, then methods by name; ``key`` starts with (method, sampler, nfe)."""
    return (key[0] != "teacher", *key)


def quality_table(agg: list[dict]) -> str:
    """One section per (dataset, main metric): every teacher sampler and method at every NFE."""
    agg = [a for a in agg if is_quality(a["metric"])]
    lines = []
    for dataset, metric in sorted({(a["dataset"], a["metric"]) for a in agg}):
        rows = [a for a in agg if (a["dataset"], a["metric"]) == (dataset, metric)]
        lines += [
            f"### {dataset} ({metric}, lower is better)",
            "",
            f"| model | sampler | NFE | {metric} (mean ± std) | seeds | train steps |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for a in sorted(rows, key=lambda a: model_order((a["method"], a["sampler"], a["nfe"]))):
            steps = "-" if a["method"] == "teacher" else a["train_steps"]
            lines.append(f"| {a['method']} | {a['sampler']} | {a['nfe']} | {mean_std(a)} | {a['seeds']} | {steps} |")
        lines.append("")
    return "\n".join(lines)


def coverage_table(agg: list[dict]) -> str:
    """ "Mode coverage": the collapse metrics present, one column each, per dataset x method x NFE."""
    agg = [a for a in agg if a["metric"] in COLLAPSE_METRICS]
    if not agg:
        return ""
    lines = [
        "## Mode coverage",
        "",
        "class_tv: total variation of the class histogram to uniform (0 is balanced); classes_covered: "
        "fraction of classes with >= 1 % of the samples; recall, precision: k-NN manifolds (k = 3).",
        "",
    ]
    for dataset in sorted({a["dataset"] for a in agg}):
        cells = {(a["method"], a["sampler"], a["nfe"], a["metric"]): a for a in agg if a["dataset"] == dataset}
        metrics = [m for m in COLLAPSE_METRICS if any(key[3] == m for key in cells)]
        lines += [
            f"### {dataset}",
            "",
            f"| model | sampler | NFE | {' | '.join(metrics)} | seeds |",
            "|---|---|---:|" + "---:|" * (len(metrics) + 1),
        ]
        for key in sorted({key[:3] for key in cells}, key=model_order):
            found = [cells.get((*key, m)) for m in metrics]
            seeds = max(a["seeds"] for a in found if a)
            values = " | ".join(mean_std(a) if a else "-" for a in found)
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {values} | {seeds} |")
        lines.append("")
    return "\n".join(lines)


def memory_table(agg: list[dict]) -> str:
    """ "Memory": training memory per dataset x method (rows at NFE 0, not about samples)."""
    agg = [a for a in agg if a["metric"] in MEMORY_METRICS]
    if not agg:
        return ""
    cells = {(a["dataset"], a["method"], a["metric"]): a for a in agg}
    metrics = [m for m in MEMORY_METRICS if any(a["metric"] == m for a in agg)]  # runs before a figure existed lack it
    lines = [
        "## Memory",
        "",
        f"| dataset | method | {' | '.join(metrics)} | seeds |",
        "|---|---|" + "---:|" * (len(metrics) + 1),
    ]
    for dataset, method in sorted({key[:2] for key in cells}):
        found = [cells.get((dataset, method, m)) for m in metrics]
        values = " | ".join(mean_std(a, 1) if a else "-" for a in found)
        lines.append(f"| {dataset} | {method} | {values} | {max(a['seeds'] for a in found if a)} |")
    lines.append("")
    return "\n".join(lines)


def markdown_table(agg: list[dict]) -> str:
    """``benchmark.md``: the quality tables, then the mode-coverage and memory sections where rows exist."""
    return "\n".join(part for part in (quality_table(agg), coverage_table(agg), memory_table(agg)) if part)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported late: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_quality_vs_nfe(agg: list[dict], path: str | Path) -> Path | None:
    """One panel per dataset: main metric against NFE (log2), a line per teacher sampler and method."""
    # The flow-map error has one NFE only: plotted against steps instead.
    agg = [a for a in agg if is_quality(a["metric"]) and a["metric"] != FLOW_MAP_METRIC]
    floors = [a for a in agg if a["nfe"] == 0]  # real data against the reference: no NFE, a level to reach
    agg = [a for a in agg if a["nfe"] > 0]
    if not agg:
        return None
    plt = pyplot()
    datasets = sorted({a["dataset"] for a in agg})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    # 20 colours times 4 markers: a dozen methods stay told apart (the default cycle repeats after 10).
    colors, markers = plt.get_cmap("tab20").colors, "sD^v"
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = [a for a in agg if a["dataset"] == dataset]
        for i, label in enumerate(sorted({(a["method"], a["sampler"]) for a in rows})):
            pts = sorted((a["nfe"], a["mean"], a["std"]) for a in rows if (a["method"], a["sampler"]) == label)
            name = f"teacher ({label[1]})" if label[0] == "teacher" else label[0]
            style = "--o" if label[0] == "teacher" else "-" + markers[i % len(markers)]
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                fmt=style,
                label=name,
                capsize=2,
                markersize=4,
                color=colors[i % len(colors)],
            )
        for floor in (f for f in floors if f["dataset"] == dataset):
            ax.axhline(floor["mean"], color="grey", linestyle=":", label=floor["method"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(rows[0]["metric"])
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_flow_map_error(rows: list[dict], path: str | Path) -> Path | None:
    """Flow-map error against training step, one line per (dataset, method), mean over seeds."""
    rows = [r for r in rows if r["metric"] == FLOW_MAP_METRIC]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for dataset, method in sorted({(r["dataset"], r["method"]) for r in rows}):
        by_step: dict[int, list[float]] = defaultdict(list)
        for r in rows:
            if (r["dataset"], r["method"]) == (dataset, method):
                by_step[r["step"]].append(r["value"])
        steps = sorted(by_step)
        ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], "-o", markersize=3, label=f"{method} ({dataset})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{FLOW_MAP_METRIC} (1 NFE vs teacher ODE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_benchmark(roots: Iterable[str | Path], out_dir: str | Path) -> list[dict]:
    """Write ``benchmark.json``, ``benchmark.md``, ``benchmark.png`` and ``flow_map_error.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    every_row = collect_runs(roots)
    rows = final_rows(every_row)
    if not rows:
        raise SystemExit(
            f"no {RESULTS_NAME} found under {list(map(str, roots))}: run `make table` or distill-train first"
        )
    public = [{k: v for k, v in r.items() if k not in ("run", "previous")} for r in rows]
    (out_dir / "benchmark.json").write_text(json.dumps(public, indent=1) + "\n")
    agg = aggregate(rows)
    (out_dir / "benchmark.md").write_text(markdown_table(agg))
    plot_quality_vs_nfe(agg, out_dir / "benchmark.png")
    # A benchmark.json holds final rows only: training curves come from run directories alone.
    plot_flow_map_error([r for r in every_row if not r.get("previous")], out_dir / "flow_map_error.png")
    return agg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs",
        nargs="+",
        help="run or sweep directories to search for results.json, or benchmark.json files whose rows to keep",
    )
    parser.add_argument("--out", default="experiments/results", help="output directory")
    args = parser.parse_args(argv)
    agg = write_benchmark(args.runs, args.out)
    print(markdown_table(agg))


if __name__ == "__main__":
    main()
