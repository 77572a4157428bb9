"""README.md stays a true front page: its benchmark block is what the results file renders to, its
method table names real configs, classes and best rows, its links resolve, and it stays short."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests.conftest import compose_config
from tests.docs.markdown import REPO

README = (REPO / "README.md").read_text()
RECIPES = (REPO / "docs" / "recipes.md").read_text()
METHOD_ROWS = [line for line in README.splitlines() if re.match(r"\| [^|]+ \| `[a-z0-9_]+` \|", line)]


def load_readme_table():
    """``experiments/readme_table.py`` as a module (experiments/ is scripts, not a package)."""
    path = REPO / "experiments" / "readme_table.py"
    spec = importlib.util.spec_from_file_location("readme_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_table"] = module
    spec.loader.exec_module(module)
    return module


readme_table = load_readme_table()


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def test_the_benchmark_tables_are_what_the_results_file_renders_to():
    assert readme_table.updated_readme(README) == README, (
        f"README.md's benchmark tables differ from {readme_table.RESULTS.relative_to(REPO)}: "
        "run `python experiments/readme_table.py`"
    )


def test_a_changed_result_makes_the_tables_stale(tmp_path):
    results = readme_table.RESULTS.read_text()
    row = next(r for r in readme_table.section(results, readme_table.DATASET, readme_table.METRIC) if r.nfe > 0)
    start = f"| {row.model} | {row.sampler} | {row.nfe} |"
    line = next(line for line in results.splitlines() if line.startswith(start))
    value = line.split("|")[4]
    changed = tmp_path / "benchmark.md"
    changed.write_text(results.replace(line, line.replace(value, f" {row.mean + 50:.4f} ± 0.0000 "), 1))
    rows = readme_table.section(changed.read_text(), readme_table.DATASET, readme_table.METRIC)
    block = readme_table.render(rows, readme_table.METRIC, "experiments/results/benchmark.md")
    assert readme_table.with_best_rows(readme_table.replace_block(README, block), rows) != README


def test_every_method_config_has_one_row():
    configs = [cells(row)[1].strip("`") for row in METHOD_ROWS]
    assert sorted(configs) == sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("row", METHOD_ROWS, ids=lambda row: cells(row)[1].strip("`"))
def test_a_method_row_names_its_configs_class_recipe_and_best_row(row, tmp_path):
    _, config, cls, _, recipe, best_cell = cells(row)
    config, cls = config.strip("`"), cls.strip("`")
    target = compose_config("train", [f"method={config}"], tmp_path).method.objective._target_
    assert target == f"distill.methods.{cls}", f"{config}'s objective is {target}"
    recipe_row = next(
        line for line in RECIPES.splitlines() if line.startswith("| `") and f"`{config}`" in cells(line)[0]
    )
    parity = "tests/parity/" in cells(recipe_row)[2]
    assert recipe == ("parity-tested" if parity else "reconstruction")
    rows = readme_table.section(readme_table.RESULTS.read_text(), readme_table.DATASET, readme_table.METRIC)
    assert best_cell == readme_table.best_cell(rows, config)


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "the README links its docs"
    assert [link for link in local if not (REPO / link).exists()] == []


def test_the_readme_is_a_front_page():
    assert len(README.encode()) <= 12 * 1024
    for target in ("make run", "make test", "teacher=diffusers", "docs/extending.md"):
        assert target in README
