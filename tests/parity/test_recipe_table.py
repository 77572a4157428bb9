"""docs/recipes.md stays true: every method config has a row, every parity test it names exists, and
every paper config is named in it and in no row whose method it does not use."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE = (REPO / "docs" / "recipes.md").read_text()
ROWS = [line for line in TABLE.splitlines() if line.startswith("| `")]


def row_cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_every_method_config_has_a_row():
    named = {name for row in ROWS for name in re.findall(r"`([a-z0-9_]+)`", row_cells(row)[0])}
    configs = {p.stem for p in (REPO / "conf" / "method").glob("*.yaml")}
    assert configs - named == set(), "method configs missing from docs/recipes.md"
    assert named - configs == set(), "docs/recipes.md names method configs that do not exist"


def test_every_parity_test_named_exists_and_every_parity_test_is_named():
    named = set(re.findall(r"`(tests/parity/test_[a-z0-9_]+\.py)`", TABLE))
    assert named and all((REPO / path).is_file() for path in named)
    files = {f"tests/parity/{p.name}" for p in (REPO / "tests" / "parity").glob("test_*.py")}
    assert files - named == {"tests/parity/test_recipe_table.py"}


def test_every_paper_config_is_in_the_row_of_its_method():
    for path in (REPO / "conf" / "experiment").glob("paper_*.yaml"):
        method = re.search(r"override /method: ([a-z0-9_]+)", path.read_text()).group(1)
        rows = [row for row in ROWS if f"`{path.stem}`" in row_cells(row)[3]]
        assert len(rows) == 1, f"{path.stem} must appear in exactly one row's paper configs"
        assert f"`{method}`" in row_cells(rows[0])[0], f"{path.stem} uses method={method}, not that row's"
