"""The Fashion-MNIST benchmark in one invocation: teacher rows, a noise floor, every method x seeds.

    make data && make table-fmnist                    # HARDWARE=gpu (default) or HARDWARE=cpu
    python experiments/table_fmnist.py hardware=gpu   # three seeds of every method, runs side by side
    python experiments/table_fmnist.py hardware=cpu   # one seed of every method on the CPU
    python experiments/table_fmnist.py hardware=cpu methods=progressive,dmd2 seeds=0,1 parallel=2
    python experiments/table_fmnist.py hardware=cpu stage=teacher      # only train (or find) the teacher
    python experiments/table_fmnist.py hardware=cpu fast_dev_run=true  # 20 steps on 256 images, 64 samples
    python experiments/table_fmnist.py hardware=cpu resume=true        # keep the finished rows, run the rest

Every student trains on the train split with the profile's budget (stated in images), the teacher
is sampled with Euler, Heun and DPM-Solver++(2M), and every row is ``fd_fmnist`` of the profile's
sample count (10,000 on the GPU, 2,000 on the CPU) against the test split. Writes ``benchmark.md``,
``benchmark.json`` and ``benchmark.png`` into ``out`` (default ``experiments/results/fashion_mnist``),
a grid per row under ``grids/``, and the samples of the teacher's best row and of each method's best
row as ``<model>_<sampler>_nfe<k>.npy``.
Any other ``key=value`` is passed to every training run as a Hydra override.

A method that continues another's model (``method.continues`` in its config: TCM continues ECT)
starts from the same seed's row of that method (``init_from``), which runs first and is added to the
table if not asked for; its students have seen both runs' images, as the table's header says.

Each invocation starts from an empty run directory, so every row comes from it. ``resume=true``
keeps the rows an interrupted invocation finished (teacher rows, noise floor, finished runs) and
runs only the rest; the table then names the invocation of every row.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
CACHE = Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))
COMMITTED = REPO / "experiments" / "weights"  # trained once, committed with RECORD.md: see ensure_teacher
CLASSIFIER_FILES = ("fmnist_classifier.safetensors", "fmnist_classifier.json")
DATASET = "fashion_mnist"
METRIC = "fd_fmnist"


@dataclass(frozen=True)
class Profile:
    """Where and how big: everything that differs between the GPU table and the CPU table."""

    hardware: str
    seeds: tuple[int, ...]
    parallel: int  # training runs side by side
    teacher: str  # teacher dir name under <cache>/teachers
    teacher_recipe: tuple[str, ...]  # distill-pretrain overrides that make it
    images: int  # training budget of every method, in images
    batch_size: int
    teacher_samplers: tuple[str, ...] = ("euler", "heun", "dpmpp_2m")
    teacher_nfes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    num_samples: int = 10_000
    eval_batch: int = 1000
    subset: int | None = None  # train on this many images (fast_dev_run)
    # Per-method overrides of this profile, printed in the table's header.
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)


PROFILES = {
    # One H100: the 6.5 M-parameter UNet of conf/dataset/fashion_mnist.yaml, six runs at a time.
    "gpu": Profile(
        hardware="gpu",
        seeds=(0, 1, 2),
        parallel=6,
        teacher="fashion_mnist",
        teacher_recipe=("hardware=gpu", "train.batch_size=256", "train.max_steps=20000", "train.lr=1e-3"),
        images=192_000,
        batch_size=128,
        eval_batch=2000,
    ),
    # Two CPU cores: a 1.1 M-parameter UNet teacher (three levels, attention at 7x7), a short budget
    # and 2,000 samples per row, so that one seed of every method fits in three hours. Two runs side by
    # side, one core each, keep both cores busy through the single-threaded stretches of each run.
    "cpu": Profile(
        hardware="cpu",
        seeds=(0,),
        parallel=2,
        teacher="fashion_mnist_cpu",
        teacher_recipe=(
            "net=unet",
            "net.block_out_channels=[32,64,64]",
            "net.attention=true",
            "train.max_steps=1500",
            "train.lr=1e-3",
        ),
        images=9_600,
        batch_size=64,
        teacher_nfes=(1, 2, 4, 8, 16),
        num_samples=2_000,
        # The methods that train on teacher ODE solutions (16 Heun steps each) solve 1,024 of them,
        # not 16,384: the budget sees 9,600 images, and 16,384 solutions would take hours on 2 cores.
        # SiDA's warm-ups (the generator waits 391 steps, the GAN joins at 782) shrink with the budget,
        # 150 steps instead of the digits rows' 1,500.
        # SiD's lr: the paper's 1e-5 is set for 10^5 steps; at 150 the validation split chose 1e-4 of
        # 1e-5, 1e-4 and 1e-3 (experiments/tune_fmnist.py; results/fashion_mnist_tuning/sid_lr/tune.md).
        # SiDA, SiD's generator and fake score with the same paper lr plus a GAN, takes that choice.
        method_overrides={
            "sid": ("method.optimizer.lr=1e-4",),
            "sida": (
                "method.objective.generator_start_step=39",
                "method.objective.gan_start_step=78",
                "method.optimizer.lr=1e-4",
            ),
            "bezier": ("method.objective.num_pairs=1024",),
            "bezier_single": ("method.objective.num_pairs=1024",),
            "reflow": ("method.objective.pairs_per_round=1024",),
            "distill_direct": ("method.objective.pairs_per_round=1024",),
        },
    ),
}


def continues(method: str) -> str | None:
    """The method whose same-seed run ``method`` starts from (its config's ``continues``), else None."""
    config = yaml.safe_load((REPO / "conf" / "method" / f"{method}.yaml").read_text())
    return config.get("continues")


def with_first_methods(methods: list[str]) -> list[str]:
    """``methods`` plus any method one of them continues, each before its continuation."""
    ordered: list[str] = []
    for method in methods:
        first = continues(method)
        if first and first not in ordered:
            ordered.append(first)
        if method not in ordered:
            ordered.append(method)
    return ordered


def fast_dev(profile: Profile) -> Profile:
    """20 training steps on 256 images and 64 samples per row: proves the pipeline, measures nothing."""
    return replace(
        profile,
        seeds=profile.seeds[:1],
        images=20 * 16,
        batch_size=16,
        teacher_nfes=(1, 2),
        num_samples=64,
        eval_batch=64,
        subset=256,
        teacher_recipe=(*profile.teacher_recipe, "train.max_steps=5", "train.batch_size=16", "dataset.subset=256"),
    )


OWN_KEYS = {"hardware", "methods", "seeds", "parallel", "out", "runs", "stage", "fast_dev_run", "cache", "resume"}


def split_arguments(argv: list[str], own_keys: set[str], script: str) -> tuple[dict[str, str], list[str]]:
    """``key=value`` arguments: a script's own keys, and the rest as Hydra overrides for its runs."""
    own, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"{arg!r}: arguments are key=value (see the docstring: python {script} --help)")
        (own.__setitem__(key, value) if key in own_keys else overrides.append(arg))
    return own, overrides


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    return split_arguments(argv, OWN_KEYS, __file__)


def chosen_profile(own: dict[str, str], hardware: str) -> Profile:
    """The profile ``hardware=`` names (else ``hardware``), with ``fast_dev_run=``, ``seeds=`` and
    ``parallel=`` applied."""
    hardware = own.get("hardware", hardware)
    if hardware not in PROFILES:
        raise SystemExit(f"hardware={hardware!r}; choose {' or '.join(PROFILES)}")
    profile = PROFILES[hardware]
    if own.get("fast_dev_run", "false").lower() == "true":
        profile = fast_dev(profile)
    if "seeds" in own:
        profile = replace(profile, seeds=tuple(int(s) for s in own["seeds"].split(",")))
    if "parallel" in own:
        profile = replace(profile, parallel=int(own["parallel"]))
    return profile


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def ensure_teacher(profile: Profile, cache: Path, log: Path) -> Path:
    """The profile's teacher dir: the cached one, else the one committed under ``experiments/weights``
    (its RECORD.md names the command, seed and hash that made it), else trained by distill-pretrain."""
    out = cache / "teachers" / profile.teacher
    for found in (out, COMMITTED / profile.teacher):
        if (found / "teacher.json").is_file():
            print(f"teacher: {found} ({'cached' if found == out else 'committed'})", flush=True)
            return found
    print(f"teacher: training {out} ({' '.join(profile.teacher_recipe)}); log in {log}", flush=True)
    start = time.time()
    cmd = python(
        "distill.pretrain",
        f"dataset={DATASET}",
        f"paths.cache={cache}",
        f"out={out}",
        "progress=false",
        *profile.teacher_recipe,
    )
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode:
            raise SystemExit(f"teacher training failed; see {log}")
    print(f"teacher: done in {hms(time.time() - start)}", flush=True)
    return out


def ensure_classifier(cache: Path) -> None:
    """``fd_fmnist``'s classifier in the cache: the committed one (RECORD.md) when none is cached yet,
    so no run retrains it; a cache that holds one keeps it."""
    if not (cache / CLASSIFIER_FILES[0]).is_file() and all((COMMITTED / f).is_file() for f in CLASSIFIER_FILES):
        cache.mkdir(parents=True, exist_ok=True)
        for name in CLASSIFIER_FILES:
            shutil.copy(COMMITTED / name, cache / name)
        print(f"fd_fmnist classifier: the committed one, copied into {cache}", flush=True)


def common_overrides(profile: Profile, cache: Path, teacher: Path) -> list[str]:
    return [
        f"paths.cache={cache}",
        f"teacher.path={teacher}",
        f"hardware={profile.hardware}",
        f"eval.num_samples={profile.num_samples}",
        f"eval.batch_size={profile.eval_batch}",
        *([f"dataset.subset={profile.subset}"] if profile.subset else []),
    ]


def teacher_job(profile: Profile, cache: Path, teacher: Path, runs: Path) -> Job:
    """Every teacher sampler x NFE, scored once (``distill-eval``), with a grid and array per row."""
    out = runs / "teacher"
    cmd = python(
        "distill.evaluate",
        f"dataset={DATASET}",
        *common_overrides(profile, cache, teacher),
        f"eval.teacher_samplers=[{','.join(profile.teacher_samplers)}]",
        f"eval.teacher_nfes=[{','.join(map(str, profile.teacher_nfes))}]",
        "eval.save_arrays=true",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    return Job(f"teacher rows ({', '.join(profile.teacher_samplers)} at NFE {list(profile.teacher_nfes)})", out, cmd)


def noise_floor(profile: Profile, cache: Path, runs: Path, invocation: str, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """``fd_fmnist`` of real training images against the test split, one subset per seed: the
    best any model can score with this many samples, and the metric's own seed-to-seed spread."""
    from omegaconf import OmegaConf

    from distill.data.datamodule import DataModule, seeded_subset
    from distill.evaluation.results import ResultRow, write_results
    from distill.evaluation.scorer import Scorer

    if all((runs / "noise_floor" / f"s{seed}" / "results.json").is_file() for seed in seeds):
        print(f"noise floor: kept from invocation {invocation_of(runs / 'noise_floor' / f's{seeds[0]}')}", flush=True)
        return
    dm = DataModule(DATASET, batch_size=1)
    scorer = Scorer(METRIC, dm.reference_samples(), cache, data_root=dm.fashion_mnist_root)
    images = dm.train_tensor()
    for seed in seeds:
        x = images[seeded_subset(len(images), profile.num_samples, seed)]
        rows = [
            ResultRow("data", "train split", 0, metric, value, len(x), 0)
            for metric, value in scorer.score_all(x).items()
        ]
        run = runs / "noise_floor" / f"s{seed}"
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(
            {"table_label": "noise floor", "dataset": {"name": DATASET}, "seed": seed}, run / ".hydra" / "config.yaml"
        )
        (run / "invocation").write_text(invocation + "\n")
        write_results(run / "results.json", rows)
    print(f"noise floor: {len(seeds)} subsets of {profile.num_samples} training images scored", flush=True)


@dataclass
class Job:
    """One process of the table (the teacher rows, or one method x seed), run in its own directory."""

    name: str
    dir: Path
    cmd: list[str]
    proc: subprocess.Popen | None = None
    start: float = 0.0
    seconds: float = 0.0
    after: Path | None = None  # the run dir of the job whose finished model this one starts from


def training_job(
    profile: Profile, method: str, seed: int, cache: Path, teacher: Path, runs: Path, overrides: list[str]
) -> Job:
    out = runs / method / f"s{seed}"
    first = continues(method)
    after = runs / first / f"s{seed}" if first else None
    cmd = python(
        "distill.train",
        "experiment=bench_fmnist",
        f"method={method}",
        f"seed={seed}",
        *common_overrides(profile, cache, teacher),
        f"train.images={profile.images}",
        f"train.batch_size={profile.batch_size}",
        f"hydra.run.dir={out}",
        *([f"init_from={after}"] if after else []),
        *profile.method_overrides.get(method, ()),
        *overrides,
    )
    return Job(f"{method} seed {seed}", out, cmd, after=after)


def run_all(profile: Profile, jobs: list[Job], invocation: str) -> list[Job]:
    """Every job as its own process, ``profile.parallel`` at a time, with a line per finished job
    and the ETA of the rest. A job's ``done`` marker lets ``resume=true`` keep it."""
    kept = [j for j in jobs if (j.dir / "done").is_file()]
    if kept:
        print(f"kept from earlier invocations: {', '.join(j.name for j in kept)}", flush=True)
    todo = [j for j in jobs if j not in kept]
    pending, active, finished, failed = list(todo), [], [], []
    begin = time.time()
    print(f"running {len(todo)} jobs, {profile.parallel} at a time", flush=True)
    while pending or active:
        for job in [j for j in pending if j.after in {f.dir for f in failed}]:
            pending.remove(job)  # the run it starts from failed: nothing to start from
            failed.append(job)
            print(f"{job.name:<22} SKIPPED: {job.after} failed", flush=True)
        while len(active) < profile.parallel:
            ready = [j for j in pending if j.after is None or (j.after / "done").is_file()]
            if not ready:
                break
            job = ready[0]
            pending.remove(job)
            shutil.rmtree(job.dir, ignore_errors=True)  # an unfinished job of an earlier invocation starts again
            job.dir.mkdir(parents=True)
            (job.dir / "invocation").write_text(invocation + "\n")
            log = open(job.dir / "job.log", "w")  # noqa: SIM115 (closed when the process ends)
            job.proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(profile))
            job.start = time.time()
            active.append(job)
        time.sleep(1.0)
        for job in [j for j in active if j.proc.poll() is not None]:
            active.remove(job)
            job.seconds = time.time() - job.start
            (finished if job.proc.returncode == 0 else failed).append(job)
            if job.proc.returncode == 0:
                (job.dir / "done").touch()
            done = len(finished) + len(failed)
            mean = statistics.fmean(j.seconds for j in finished + failed)
            eta = mean * math.ceil((len(todo) - done) / profile.parallel)
            status = "ok" if job.proc.returncode == 0 else f"FAILED (exit {job.proc.returncode}, see {job.dir}/job.log)"
            print(
                f"[{done:>3}/{len(todo)}] {job.name:<22} {status}  {hms(job.seconds)}  "
                f"elapsed {hms(time.time() - begin)}  ETA {hms(eta)}",
                flush=True,
            )
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(j.name for j in failed)}", flush=True)
    return finished


def child_env(profile: Profile) -> dict[str, str]:
    """On the CPU, runs side by side share the cores instead of each taking all of them."""
    env = dict(os.environ)
    if profile.hardware == "cpu" and profile.parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // profile.parallel))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def invocation_of(run: Path) -> str:
    marker = run / "invocation"
    return marker.read_text().strip() if marker.is_file() else "unknown"


def provenance(runs: Path) -> list[str]:
    """Which invocation made each row, when the rows come from more than one."""
    by_row = {
        str(marker.parent.relative_to(runs)): marker.read_text().strip() for marker in sorted(runs.rglob("invocation"))
    }
    if len(set(by_row.values())) <= 1:
        return []
    return [
        f"Rows from {len(set(by_row.values()))} invocations (resume=true):",
        "",
        *(f"- `{row}`: {when}" for row, when in by_row.items()),
        "",
    ]


def best_rows(rows: list[dict]) -> dict[str, dict]:
    """The lowest mean ``fd_fmnist`` row of each model (teacher: any sampler and NFE)."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["metric"] == METRIC and r["dataset"] == DATASET and r["nfe"] > 0:
            if r["method"] not in best or r["mean"] < best[r["method"]]["mean"]:
                best[r["method"]] = r
    return best


def targets(agg: list[dict]) -> list[str]:
    """The benchmark's targets, each line saying whether it holds."""
    main = [a for a in agg if a["metric"] == METRIC and a["nfe"] > 0]
    teacher = [a for a in main if a["method"] == "teacher"]
    students = [a for a in main if a["method"] not in ("teacher", "noise floor")]
    if not teacher or not students:
        return ["(targets need teacher and student rows)"]
    teacher_best = min(teacher, key=lambda a: a["mean"])

    def at(nfe: int, sampler: str | None = None) -> list[dict]:
        return [
            a
            for a in (teacher if sampler else students)
            if a["nfe"] == nfe and (not sampler or a["sampler"] == sampler)
        ]

    lines = [f"Teacher's best row: {teacher_best['sampler']} at {teacher_best['nfe']} NFE, {teacher_best['mean']:.3f}."]
    for nfe, factor in ((2, 1.0), (1, 1.2)):
        if at(nfe):
            best = min(at(nfe), key=lambda a: a["mean"])
            ratio = best["mean"] / teacher_best["mean"]
            lines.append(
                f"- Best method at {nfe} NFE ({best['method']}, {best['mean']:.3f}) is {ratio:.2f}x the "
                f"teacher's best (target <= {factor}x): {'holds' if ratio <= factor else 'missed'}."
            )
    euler2, dpm4 = at(2, "euler"), at(4, "dpmpp_2m")
    if euler2 and dpm4:
        misses = [
            a["method"] for a in at(2) if not (a["mean"] * 5 <= euler2[0]["mean"] and a["mean"] < dpm4[0]["mean"])
        ]
        lines.append(
            f"- Every method at 2 NFE at least 5x below the teacher's Euler at 2 NFE ({euler2[0]['mean']:.3f}) "
            f"and below DPM-Solver++(2M) at 4 NFE ({dpm4[0]['mean']:.3f}): "
            + ("holds." if not misses else f"missed by {', '.join(misses)}.")
        )
    return lines


def publish(
    profile: Profile, cache: Path, runs: Path, out: Path, invocation: str, wall: float, overrides: list[str]
) -> None:
    """The table, plot, grids and best-row arrays, from this invocation's run dirs only."""
    from distill.table import write_benchmark

    out.mkdir(parents=True, exist_ok=True)
    agg = write_benchmark([runs], out)
    grids = out / "grids"
    shutil.rmtree(grids, ignore_errors=True)
    grids.mkdir()
    for png in sorted(runs.rglob("samples/*.png")):
        model = "teacher" if png.parts[-3] == "teacher" else png.parts[-4]
        if model == "teacher" or png.parts[-3] == f"s{profile.seeds[0]}":
            # teacher_<sampler>_nfe<k>.png stays as it is; student_<method>_nfe<k>_step<s>.png -> <method>_nfe<k>.png
            shutil.copy(png, grids / (png.stem.removeprefix("student_").split("_step")[0] + ".png"))
    for stale in out.glob("*.npy"):
        stale.unlink()
    for model, row in best_rows(agg).items():
        pattern = (
            f"teacher/samples/teacher_{row['sampler']}_nfe{row['nfe']}.npy"
            if model == "teacher"
            else f"{model}/s{profile.seeds[0]}/samples/student_{row['sampler']}_nfe{row['nfe']}_step*.npy"
        )
        found = sorted(runs.glob(pattern))
        if found:
            shutil.copy(found[-1], out / f"{model}_{row['sampler']}_nfe{row['nfe']}.npy")
    invocations = provenance(runs)
    header = [
        "# Fashion-MNIST benchmark",
        "",
        f"`python experiments/table_fmnist.py hardware={profile.hardware}"
        + "".join(f" {o}" for o in overrides)
        + ("`, resumed" if invocations else "`, one invocation")
        + f" ({invocation}, {hms(wall)} wall on {machine(profile)}).",
        "",
        *invocations,
        f"fd_fmnist: Fréchet distance in the 128-d features of a CNN trained on the train split "
        f"({classifier_accuracy(cache)}), {profile.num_samples:,} samples per row against the 10,000 test images. "
        f"Every method trains on training images 0-54,999 for {profile.images:,} images "
        f"(batch {profile.batch_size}); seeds {list(profile.seeds)}; mean ± std over seeds. The noise floor is "
        f"{profile.num_samples:,} training images against the test split, three subsets.",
        "",
        *continuation_note(profile, runs),
        *(
            [
                "Per-method settings of this profile: "
                + "; ".join(f"{m}: `{' '.join(o)}`" for m, o in sorted(profile.method_overrides.items()))
                + ".",
                "",
            ]
            if profile.method_overrides
            else []
        ),
        "## Targets",
        "",
        *targets(agg),
        "",
    ]
    body = (out / "benchmark.md").read_text()
    (out / "benchmark.md").write_text("\n".join(header) + "\n" + body)
    print((out / "benchmark.md").read_text())


def continuation_note(profile: Profile, runs: Path) -> list[str]:
    """A header line for each method in the table that continues another's run, with its combined budget."""
    lines = [
        f"{method} starts from the same seed's {first} row (`init_from`): its students have seen "
        f"{2 * profile.images:,} images in all, {profile.images:,} in each run."
        for method in sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name in METHODS)
        if (first := continues(method))
    ]
    return [*lines, ""] if lines else []


def machine(profile: Profile) -> str:
    import torch

    if profile.hardware == "gpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPU cores"


def classifier_accuracy(cache: Path) -> str:
    record = cache / "fmnist_classifier.json"
    if record.is_file():
        return f"test accuracy {json.loads(record.read_text())['test_accuracy']:.1%}"
    return "test accuracy in its record"


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    own, overrides = parse(argv)
    profile = chosen_profile(own, "gpu")
    hardware = profile.hardware
    methods = own["methods"].split(",") if "methods" in own else METHODS
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"methods={','.join(unknown)} unknown; choose from {','.join(METHODS)}")
    for method in methods:
        if (first := continues(method)) and first not in methods:
            print(f"methods: adding {first}: {method} starts from the same seed's {first} run", flush=True)
    methods = with_first_methods(methods)
    cache = Path(own.get("cache", CACHE)).expanduser()
    runs = Path(own.get("runs", REPO / "experiments" / "runs" / f"fashion_mnist_{hardware}")).resolve()
    out = Path(own.get("out", REPO / "experiments" / "results" / "fashion_mnist")).resolve()
    invocation = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    begin = time.time()
    logs = runs.parent / f"{runs.name}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    teacher = ensure_teacher(profile, cache, logs / "pretrain.log")
    if own.get("stage") == "teacher":
        return
    if own.get("resume", "false").lower() != "true":
        shutil.rmtree(runs, ignore_errors=True)  # every row of the table comes from this invocation
    runs.mkdir(parents=True, exist_ok=True)
    ensure_classifier(cache)
    noise_floor(profile, cache, runs, invocation)
    jobs = [teacher_job(profile, cache, teacher, runs)]  # first: the longest job, beside the first runs
    jobs += [training_job(profile, m, s, cache, teacher, runs, overrides) for s in profile.seeds for m in methods]
    run_all(profile, jobs, invocation)
    publish(profile, cache, runs, out, invocation, time.time() - begin, overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
