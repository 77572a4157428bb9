"""``results.json``: the one record every table and plot is made from (docs/guide.md, run directories)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.core.io import save_json

RESULTS_NAME = "results.json"
# Training-memory rows (model="student", sampler=<method name>, nfe=0): facts of the run, not of samples.
MEMORY_METRICS = ("peak_memory_mb", "model_memory_mb", "optimizer_memory_mb")


@dataclass(frozen=True)
class ResultRow:
    model: str  # "teacher" | "student"
    sampler: str
    nfe: int
    metric: str
    value: float
    num_samples: int
    step: int


def load_results(path: str | Path) -> list[dict]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else []


def write_results(path: str | Path, rows: list[ResultRow]) -> None:
    """Replace the file with ``rows``, atomically."""
    save_json(path, [asdict(r) for r in rows])


def append_results(path: str | Path, rows: list[ResultRow]) -> None:
    """Append rows, rewriting the file atomically so an interrupted run never leaves half a file."""
    save_json(path, load_results(path) + [asdict(r) for r in rows])
