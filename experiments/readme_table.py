"""The README's headline benchmark table, rendered from a results table that ``distill-table`` wrote.

    python experiments/readme_table.py           # rewrite the README's block from the results
    python experiments/readme_table.py --check   # exit 1 when the README's block is stale

The block sits between ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``; everything
in it is generated, and so is the "best row" column of the method table, so neither can drift from
the results file (``tests/docs/test_readme.py``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "benchmark.md"  # make table
DATASET, METRIC = "digits", "fd_digits"
README = REPO / "README.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
NFES = (1, 2, 4)  # the student step counts the headline shows


@dataclass(frozen=True)
class Row:
    """One row of a ``distill-table`` quality table."""

    model: str
    sampler: str
    nfe: int
    mean: float
    std: float
    seeds: int


def section(text: str, dataset: str, metric: str) -> list[Row]:
    """The rows under ``### <dataset> (<metric>, ...)`` of a ``distill-table`` markdown file."""
    heading = re.search(rf"^### {re.escape(dataset)} \({re.escape(metric)},.*$", text, re.MULTILINE)
    if heading is None:
        raise ValueError(f"no '### {dataset} ({metric}, ...)' table in the results file")
    rows = []
    for line in text[heading.end() :].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("model", "") or cells[0].startswith("-"):
            continue
        mean, std = (float(v) for v in cells[3].split("±"))
        rows.append(Row(cells[0], cells[1], int(cells[2]), mean, std, int(cells[4])))
    return rows


def best(rows: list[Row], model: str, sampler: str | None = None) -> Row | None:
    """The lowest-mean row of ``model`` (and ``sampler``), over every NFE; None when it has no row."""
    mine = [r for r in rows if r.model == model and sampler in (None, r.sampler)]
    return min(mine, key=lambda r: r.mean, default=None)


def cell(row: Row | None) -> str:
    """``mean`` with 2 decimals, ``± std`` when several seeds were run; ``-`` for no row."""
    if row is None:
        return "-"
    return f"{row.mean:.2f}" if row.seeds == 1 else f"{row.mean:.2f} ± {row.std:.2f}"


def render(rows: list[Row], metric: str, source: str) -> str:
    """The headline table: teacher samplers and every student, 1 / 2 / 4 NFE and its best row."""
    groups = sorted(
        {(r.model, r.sampler) for r in rows},
        key=lambda g: (g[0] != "teacher", best(rows, *g).mean, g),
    )
    lines = [
        f"`{metric}`, lower is better, from [`{source}`]({source}) (rows: mean ± std over training "
        "seeds where there are several).",
        "",
        "| model | sampler | " + " | ".join(f"{n} NFE" for n in NFES) + " | best (NFE) | seeds |",
        "|---|---|" + "---:|" * (len(NFES) + 2),
    ]
    for model, sampler in groups:
        at = {r.nfe: r for r in rows if (r.model, r.sampler) == (model, sampler)}
        top = best(rows, model, sampler)
        values = " | ".join(cell(at.get(n)) for n in NFES)
        lines.append(f"| {model} | {sampler} | {values} | {cell(top)} ({top.nfe}) | {top.seeds} |")
    return "\n".join(lines)


def headline(results: Path = RESULTS, dataset: str = DATASET, metric: str = METRIC) -> str:
    return render(section(results.read_text(), dataset, metric), metric, results.relative_to(REPO).as_posix())


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md needs exactly one {START} and one {END}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n\n{block}\n\n{END}{tail}"  # blank lines: the table stays a table


METHOD_ROW = re.compile(r"^(\| [^|]+ \| `(?P<config>[a-z0-9_]+)` \|.*\| )(?P<best>[^|]*?)( \|)$", re.MULTILINE)


def best_cell(rows: list[Row], config: str) -> str:
    """The method table's last column: the config's best row and its NFE, ``-`` when it has none."""
    top = best(rows, config)
    return "-" if top is None else f"{cell(top)} ({top.nfe})"


def with_best_rows(readme: str, rows: list[Row]) -> str:
    """``readme`` with every method-table row's best-row cell taken from ``rows``."""
    return METHOD_ROW.sub(lambda m: m.group(1) + best_cell(rows, m.group("config")) + m.group(4), readme)


def updated_readme(readme: str, results: Path = RESULTS) -> str:
    rows = section(results.read_text(), DATASET, METRIC)
    return with_best_rows(replace_block(readme, headline(results)), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    args = parser.parse_args(argv)
    text = README.read_text()
    updated = updated_readme(text)
    if args.check:
        if updated != text:
            print("README.md's benchmark tables are stale: run `python experiments/readme_table.py`")
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
