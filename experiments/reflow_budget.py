"""Reflow's payoff against the distillation budget: one-step students distilled from a flow
(``method=distill_direct``) for several step budgets and seeds, grouped by the flow they were
distilled from (the teacher, its 2-rectified flow, ...). InstaFlow's claim is that distilling the
straightened flow is easier; this shows at which budgets that holds.

    make reflow-budget      # the sweep, then this script
    python experiments/reflow_budget.py experiments/runs/reflow_budget --out experiments/results

Writes reflow_budget.md (per-seed scores, their mean and range) and reflow_budget.png.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from distill.evaluation.results import RESULTS_NAME, load_results
from distill.table import pyplot, save_figure

# {(source flow, distillation steps): {seed: score}}
Scores = dict[tuple[str, int], dict[int, float]]


def one_step_scores(root: str | Path, metric: str) -> Scores:
    """{(source flow, distillation steps): {seed: the student's final 1-NFE ``metric``}} of every
    distill_direct run under root."""
    scores: Scores = defaultdict(dict)
    for results in sorted(Path(root).rglob(RESULTS_NAME)):
        cfg = OmegaConf.load(results.parent / ".hydra" / "config.yaml")
        if cfg.method.name != "distill_direct":
            continue
        rows = [r for r in load_results(results) if r["model"] == "student" and r["nfe"] == 1 and r["metric"] == metric]
        if rows:
            final = max(rows, key=lambda r: r["step"])
            source = Path(cfg.teacher.path).name  # the teacher dir: digits, digits_2rf, ...
            scores[(source, int(cfg.train.max_steps))][int(cfg.seed)] = final["value"]
    return scores


def markdown(scores: Scores, metric: str) -> str:
    seeds = sorted({s for per_seed in scores.values() for s in per_seed})
    lines = [
        f"| distilled from | steps | {' | '.join(f'seed {s}' for s in seeds)} | mean | range |",
        "|---|---:|" + "---:|" * (len(seeds) + 2),
    ]
    for (source, steps), per_seed in sorted(scores.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        values = list(per_seed.values())
        cells = " | ".join(f"{per_seed[s]:.2f}" if s in per_seed else "" for s in seeds)
        lines.append(
            f"| {source} | {steps} | {cells} | {statistics.fmean(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
        )
    return f"One-step students, `{metric}` at 1 NFE (lower is better).\n\n" + "\n".join(lines) + "\n"


def plot(scores: Scores, metric: str, path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for source in sorted({source for source, _ in scores}):
        budgets = sorted(steps for s, steps in scores if s == source)
        values = [list(scores[(source, b)].values()) for b in budgets]
        means = [statistics.fmean(v) for v in values]
        ax.plot(budgets, means, "-o", label=f"from {source} (mean of seeds)")
        for b, v in zip(budgets, values, strict=True):  # every seed, so the spread is visible
            ax.scatter([b] * len(v), v, s=10, alpha=0.4, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("distillation steps")
    ax.set_ylabel(f"{metric}, 1 NFE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="sweep directories of distill_direct runs")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--metric", default="fd_digits")
    args = parser.parse_args(argv)
    scores: Scores = {}
    for root in args.roots:
        for key, per_seed in one_step_scores(root, args.metric).items():
            scores.setdefault(key, {}).update(per_seed)
    if not scores:
        raise SystemExit(f"no 1-NFE student scores under {args.roots}: run `make reflow-budget` first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(scores, args.metric)
    (out / "reflow_budget.md").write_text(table)
    print(table)
    print(f"wrote {out / 'reflow_budget.md'} and {plot(scores, args.metric, out / 'reflow_budget.png')}")


if __name__ == "__main__":
    main()
