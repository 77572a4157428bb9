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


def test_every_entry_point_takes_its_paths_from_the_one_paths_group(tmp_path, monkeypatch):
    from tests.conftest import compose_config

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    configs = sorted(p.stem for p in (REPO / "conf").glob("*.yaml"))
    assert configs == ["evaluate", "export", "export_teacher", "pretrain", "sample", "train"]
    for name in configs:
        cfg = compose_config(name, ["run_dir=x", "out=y"] if name.startswith("export") else [], tmp_path)
        assert cfg.paths.cache == str(tmp_path / "cache"), name
        assert cfg.paths.models == str(tmp_path / "cache" / "models"), name
        restated = re.search(r"^paths:", (REPO / "conf" / f"{name}.yaml").read_text(), re.MULTILINE)
        assert restated is None, f"conf/{name}.yaml restates paths"
