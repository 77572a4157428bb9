"""Conditional Fashion-MNIST: one guidance-input student against the teacher at the same w.

    python experiments/guidance_fmnist.py hardware=cpu                     # progressive, w = 1, 2, 3, 4
    python experiments/guidance_fmnist.py hardware=cpu method=consistency scales=1,1.5,2,3,4,6
    python experiments/guidance_fmnist.py hardware=cpu fast_dev_run=true   # proves the pipeline only
    python experiments/guidance_fmnist.py hardware=cpu images=38400 resume=true  # a longer student, same teacher rows

Trains (or finds) a class-conditional teacher (the profile's recipe of ``table_fmnist.py`` plus
``conditional=true``, cached as ``<cache>/teachers/<profile teacher>_cond``), distils one student
with ``student.guidance_range`` (``range=low,high``, default 1,4: each training sample's w drawn
log-uniformly, methods.md 13) for the profile's budget (``images=`` sets another), then for every w
in ``scales`` scores the teacher guided at w (Heun, ``teacher_nfe`` steps) and the student asked for
w (at each of ``nfes``) with ``distill-eval guidance=<w>``: ``fd_fmnist`` against the test split and
``class_accuracy`` (the share of samples the fd_fmnist classifier reads as the class each seed asked
for). Writes ``guidance.md`` and ``guidance.json`` into ``out`` (default
``experiments/results/fashion_mnist_guidance``), and the runs and their logs under ``runs``
(default ``experiments/runs/fashion_mnist_guidance``). ``resume=true`` keeps the teacher rows of an
earlier invocation that scored the same teacher with the same settings (the table names their
invocation); the student is always trained and scored anew.
Any other ``key=value`` is passed to the training run as a Hydra override.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_fmnist import (
    CACHE,
    DATASET,
    METRIC,
    REPO,
    chosen_profile,
    ensure_classifier,
    ensure_teacher,
    hms,
    python,
    split_arguments,
)

OWN_KEYS = {"hardware", "method", "scales", "range", "nfes", "teacher_nfe", "images", "out", "runs", "resume"}
OWN_KEYS |= {"fast_dev_run", "cache"}
INVOCATION = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    return split_arguments(argv, OWN_KEYS, __file__)


def numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def run(cmd: list[str], log: Path, what: str) -> None:
    start = time.time()
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode:
            raise SystemExit(f"{what} failed; see {log}")
    print(f"{what}: done in {hms(time.time() - start)}", flush=True)


def train_anew(cmd: list[str], at: Path, log: Path, what: str) -> None:
    """Run the training ``cmd`` into the empty run folder ``at``: distill-train would resume the
    checkpoint an earlier invocation left there."""
    shutil.rmtree(at, ignore_errors=True)
    run(cmd, log, what)


def rows_at(results: Path) -> dict[tuple[str, int], dict[str, float]]:
    """``(model, nfe) -> {metric: value}`` of one distill-eval results.json."""
    table: dict[tuple[str, int], dict[str, float]] = {}
    for row in json.loads(results.read_text()):
        table.setdefault((row["model"], row["nfe"]), {})[row["metric"]] = row["value"]
    return table


def teacher_rows(at: Path, w: float, settings: list[str], resume: bool) -> tuple[dict, str]:
    """The teacher's rows at w (guided at w, Heun) and the invocation that scored them: kept from an
    earlier invocation under ``resume`` when it scored the same teacher with the same settings (they
    depend on nothing the student does), else scored now into ``at``."""
    record = at / "settings.json"
    if not (resume and record.is_file() and json.loads(record.read_text()) == settings):
        shutil.rmtree(at, ignore_errors=True)
        at.parent.mkdir(parents=True, exist_ok=True)
        cmd = python(
            "distill.evaluate",
            f"dataset={DATASET}",
            *settings,
            f"guidance={w}",
            "eval.teacher_samplers=[heun]",
            f"hydra.run.dir={at}",
        )
        run(cmd, at.parent / "teacher.log", f"w = {w:g}: teacher")
        (at / "invocation").write_text(INVOCATION + "\n")
        record.write_text(json.dumps(settings))
    rows = {key: row for key, row in rows_at(at / "results.json").items() if key[0] == "teacher"}
    return rows, (at / "invocation").read_text().strip()


def markdown(
    method: str, low: float, high: float, by_w: dict[float, dict], nfes: list[int], teacher_nfe: int, header: str = ""
) -> str:
    head = ["w", f"teacher Heun ({teacher_nfe} steps): {METRIC}", "class acc."]
    for k in nfes:
        head += [f"{method} {k} NFE: {METRIC}", "class acc."]
    lines = [
        f"# Conditional Fashion-MNIST: one {method} student over w in [{low:g}, {high:g}] vs the teacher at the same w",
        "",
        *([header, ""] if header else []),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for w, table in by_w.items():
        cells = [f"{w:g}"]
        teacher = [key for key in table if key[0] == "teacher"]  # Heun's count: its last step is Euler
        for key in [*teacher[:1], *(("student", k) for k in nfes)]:
            row = table.get(key, {})
            cells += [f"{row.get(METRIC, float('nan')):.2f}", f"{row.get('class_accuracy', float('nan')):.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    own, overrides = parse(argv)
    profile = chosen_profile(own, "cpu")
    fast = own.get("fast_dev_run", "false").lower() == "true"
    resume = own.get("resume", "false").lower() == "true"
    if "images" in own:
        profile = replace(profile, images=int(own["images"]))
    # A fast_dev_run teacher (5 steps) gets a name of its own, so that it never stands in for the real one.
    name = f"{profile.teacher}_cond" + ("_fast_dev" if fast else "")
    profile = replace(profile, teacher=name, teacher_recipe=(*profile.teacher_recipe, "conditional=true"))
    method, scales = own.get("method", "progressive"), numbers(own.get("scales", "1,2,3,4"))
    low, high = numbers(own.get("range", "1,4"))
    nfes = [int(k) for k in numbers(own.get("nfes", "1,2" if fast else "1,2,4"))]
    teacher_nfe = int(own.get("teacher_nfe", "4" if fast else "16"))
    cache = Path(own.get("cache", CACHE))
    folder = "fashion_mnist_guidance" + ("_fast_dev" if fast else "")
    out = Path(own.get("out", REPO / "experiments" / "results" / folder))
    runs = Path(own.get("runs", REPO / "experiments" / "runs" / folder))  # logs, the student's run and each w's
    runs.mkdir(parents=True, exist_ok=True)
    ensure_classifier(cache)
    teacher = ensure_teacher(profile, cache, runs / "teacher.log")
    common = [
        f"paths.cache={cache}",
        f"teacher.path={teacher}",
        f"hardware={profile.hardware}",
        f"eval.num_samples={profile.num_samples}",
        f"eval.batch_size={profile.eval_batch}",
        *([f"dataset.subset={profile.subset}"] if profile.subset else []),
        "progress=false",
    ]
    student = runs / "student"
    train = python(
        "distill.train",
        "experiment=bench_fmnist",
        f"method={method}",
        *common,
        f"student.guidance_range=[{low},{high}]",
        f"teacher.guidance={(low * high) ** 0.5}",  # the run's own evaluation: the middle of the range
        f"train.images={profile.images}",
        f"train.batch_size={profile.batch_size}",
        *profile.method_overrides.get(method, ()),
        "eval.teacher=false",
        f"eval.student_nfes=[{nfes[0]}]",
        f"hydra.run.dir={student}",
        *overrides,
    )
    print(f"training {method} over w in [{low:g}, {high:g}] ({profile.images:,} images)", flush=True)
    train_anew(train, student, runs / "train.log", f"{method} student")
    by_w, teacher_from = {}, set()
    for w in scales:
        rows, when = teacher_rows(
            runs / f"w{w:g}" / "teacher", w, [*common, f"eval.teacher_nfes=[{teacher_nfe}]"], resume
        )
        teacher_from.add(when)
        at = runs / f"w{w:g}" / "student"
        shutil.rmtree(at, ignore_errors=True)  # distill-eval appends to results.json
        cmd = python(
            "distill.evaluate",
            f"dataset={DATASET}",
            *common,
            f"run_dir={student}",
            f"guidance={w}",
            "eval.teacher=false",
            f"eval.student_nfes=[{','.join(map(str, nfes))}]",
            f"hydra.run.dir={at}",
        )
        run(cmd, runs / f"eval_w{w:g}.log", f"w = {w:g}: student")
        by_w[w] = {**rows, **rows_at(at / "results.json")}
    header = (
        f"`python experiments/guidance_fmnist.py {' '.join(argv)}` ({INVOCATION}); the student trained on "
        f"{profile.images:,} images at batch {profile.batch_size}; {profile.num_samples:,} samples per row; "
        f"teacher rows from the invocation{'s' if len(teacher_from) > 1 else ''} {', '.join(sorted(teacher_from))}."
    )
    text = markdown(method, low, high, by_w, nfes, teacher_nfe, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guidance.md").write_text(text)
    (out / "guidance.json").write_text(
        json.dumps({f"{w:g}": {f"{m}@{k}": v for (m, k), v in t.items()} for w, t in by_w.items()}, indent=2)
    )
    print(text, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
