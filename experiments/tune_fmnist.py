"""Choose one setting of one method on Fashion-MNIST's validation split, never on the test split.

    python experiments/tune_fmnist.py hardware=cpu method=sid key=method.optimizer.lr values=1e-5,1e-4,3e-4,1e-3
    python experiments/tune_fmnist.py hardware=cpu method=dmd2 key=method.optimizer.lr values=1e-5,1e-4 nfe=2
    python experiments/tune_fmnist.py hardware=cpu method=sid key=method.optimizer.lr values=1e-4,1e-3 fast_dev_run=true

Each value is one run of the table's recipe for ``method`` (``table_fmnist.py``: the profile's teacher,
budget, sample count and per-method settings) plus ``<key>=<value>`` and
``dataset.reference_split=validation``, so every row scores its samples against training images
55,000-59,999, which no model trains on. The chosen value is the one with the lowest ``fd_fmnist`` at
``nfe`` (default 1). Writes ``tune.md`` and ``tune.json`` into ``out`` (default
``experiments/results/fashion_mnist_tuning/<method>_<key>``; the runs go under ``runs``). Runs go side
by side as in the table (``parallel=``); ``seed=`` (default 0) seeds every run; any other
``key=value`` is a Hydra override for every run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_fmnist import (
    CACHE,
    METHODS,
    METRIC,
    REPO,
    chosen_profile,
    ensure_classifier,
    ensure_teacher,
    hms,
    run_all,
    split_arguments,
    training_job,
)

OWN_KEYS = {"hardware", "method", "key", "values", "nfe", "seed", "parallel", "out", "runs", "cache", "fast_dev_run"}


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    own, overrides = split_arguments(argv, OWN_KEYS, __file__)
    missing = [k for k in ("method", "key", "values") if k not in own]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: name the method, the config key and its values (--help)")
    if own["method"] not in METHODS:
        raise SystemExit(f"method={own['method']} unknown; choose from {','.join(METHODS)}")
    return own, overrides


def tuning_jobs(
    profile, method: str, key: str, values: list[str], seed: int, cache: Path, teacher: Path, runs: Path, overrides
) -> list:
    """One table run of ``method`` per value, scored on the validation split, each in ``runs/<value>``."""
    jobs = []
    for value in values:
        setting = [*overrides, f"{key}={value}", "dataset.reference_split=validation"]
        job = training_job(profile, method, seed, cache, teacher, runs / value, setting)
        (job.dir / "done").unlink(missing_ok=True)  # every row comes from this invocation
        jobs.append(replace(job, name=f"{key}={value}"))
    return jobs


def scores(results: Path) -> dict[int, float]:
    """``nfe -> fd_fmnist`` of the student rows of one run's results.json."""
    rows = json.loads(results.read_text())
    return {r["nfe"]: r["value"] for r in rows if r["model"] == "student" and r["metric"] == METRIC}


def markdown(method: str, key: str, by_value: dict[str, dict[int, float]], nfe: int, chosen: str, header: str) -> str:
    nfes = sorted({k for row in by_value.values() for k in row})
    lines = [
        f"# Fashion-MNIST validation split: `{key}` of `{method}`",
        "",
        header,
        "",
        f"`{METRIC}` against training images 55,000-59,999 (the validation split; no model trains on them). "
        f"Chosen: `{key}={chosen}`, the lowest at {nfe} NFE.",
        "",
        "| " + " | ".join([key, *(f"{k} NFE" for k in nfes)]) + " |",
        "|" + "---|" * (len(nfes) + 1),
    ]
    for value, row in by_value.items():
        mark = " (chosen)" if value == chosen else ""
        cells = [f"{row[k]:.2f}" if k in row else "failed" for k in nfes]
        lines.append(f"| {value}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    own, overrides = parse(argv)
    profile = chosen_profile(own, "gpu")
    hardware = profile.hardware
    method, key, values = own["method"], own["key"], [v for v in own["values"].split(",") if v]
    nfe, seed = int(own.get("nfe", "1")), int(own.get("seed", "0"))
    cache = Path(own.get("cache", CACHE)).expanduser()
    name = f"{method}_{key.rsplit('.', 1)[-1]}"
    out = Path(own.get("out", REPO / "experiments" / "results" / "fashion_mnist_tuning" / name)).resolve()
    runs = Path(
        own.get("runs", REPO / "experiments" / "runs" / "fashion_mnist_tuning" / f"{hardware}_{name}")
    ).resolve()
    invocation = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    begin = time.time()
    runs.mkdir(parents=True, exist_ok=True)
    teacher = ensure_teacher(profile, cache, runs / "pretrain.log")
    ensure_classifier(cache)
    jobs = tuning_jobs(profile, method, key, values, seed, cache, teacher, runs, overrides)
    run_all(profile, jobs, invocation)
    by_value = {
        value: scores(job.dir / "results.json") if (job.dir / "done").is_file() else {}
        for value, job in zip(values, jobs, strict=True)
    }
    scored = {v: row[nfe] for v, row in by_value.items() if nfe in row}
    if not scored:
        raise SystemExit(f"no run scored {nfe} NFE; see the job.log of each run under {runs}")
    chosen = min(scored, key=scored.get)
    header = (
        f"`python experiments/tune_fmnist.py {' '.join(argv)}` ({invocation}, {hms(time.time() - begin)} wall); "
        f"profile `{hardware}`: {profile.images:,} images at batch {profile.batch_size}, "
        f"{profile.num_samples:,} samples per row, seed {seed}."
    )
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(method, key, by_value, nfe, chosen, header)
    (out / "tune.md").write_text(text)
    (out / "tune.json").write_text(
        json.dumps({"method": method, "key": key, "nfe": nfe, "chosen": chosen, "fd_fmnist": by_value}, indent=2)
    )
    print(text, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
