"""Entry points share code through library modules (distill.build, distill.runs), never by
importing one another, so each script can change without breaking the others. (``distill.table``
is also the library that formats result tables, which train and evaluate print.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def entry_modules() -> set[str]:
    """Modules named by ``[project.scripts]`` plus the ``python -m`` scripts with a ``main``."""
    scripts = set(re.findall(r'= "distill\.(\w+):main"', (REPO / "pyproject.toml").read_text()))
    return (scripts | {"export_teacher"}) - {"table"}


def distill_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {m.removeprefix("distill.") for m in found if m.startswith("distill.")}


def test_no_entry_point_imports_another():
    entries = entry_modules()
    assert {"train", "evaluate", "sample", "export"} <= entries
    for name in sorted(entries):
        crossing = distill_imports(REPO / "distill" / f"{name}.py") & entries
        assert not crossing, f"distill/{name}.py imports the entry point(s) {sorted(crossing)}"
