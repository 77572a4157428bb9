"""Score one AnyFlow run's student at one step count on sampling grids of several shifts: the choice
behind ``method.objective.nfe_shifts`` (docs/methods.md 10.4).

    python experiments/anyflow_grid.py run_dir=<digits run> nfe=2 shifts=1,0.5,0.4,0.3,0.25,0.2 split=train
    python experiments/anyflow_grid.py run_dir=<fashion_mnist run> nfe=2 shifts=1,0.5,0.3 split=validation

Choose on a split the table does not report: ``train`` (the run's training images; digits has no
third split) or, on Fashion-MNIST, ``validation``; ``split=report`` scores against the split the
run's table reports (digits' held-out images, Fashion-MNIST's test split), to show the choice's
result after it is made. The samples are the run's evaluation samples (``eval.num_samples``,
``eval.seed``); the training, which the grid does not touch, is not repeated. Prints one row per shift.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from distill.build import build_datamodule, build_eval_spec, build_scorer
from distill.core.errors import ConfigError
from distill.evaluation.runner import evaluate_student
from distill.evaluation.scorer import Scorer
from distill.runs import load_run_module

KEYS = {"run_dir", "nfe", "shifts", "split", "cache"}


def arguments(argv: list[str]) -> dict[str, str]:
    own = dict(arg.partition("=")[::2] for arg in argv)
    if unknown := set(own) - KEYS:
        raise SystemExit(f"unknown arguments {sorted(unknown)}; take {sorted(KEYS)} (python {__file__} --help)")
    if missing := {"run_dir", "shifts"} - set(own):
        raise SystemExit(f"give {sorted(missing)} (python {__file__} --help)")
    return own


def scorer_for(cfg, split: str) -> Scorer:
    """The run's scorer, against its training images (``train``), its reported split (``report``), or
    Fashion-MNIST's ``validation`` split."""
    if split not in ("train", "report", "validation"):
        raise SystemExit(f"split={split!r}; choose train, validation (fashion_mnist) or report")
    if split == "validation":
        if cfg.dataset.name != "fashion_mnist":
            raise ConfigError(f"split=validation: dataset {cfg.dataset.name} has none; use split=train")
        with open_dict(cfg):
            cfg.dataset.reference_split = "validation"
    dm = build_datamodule(cfg)
    return build_scorer(cfg, dm, progress=False, reference=dm.train_tensor() if split == "train" else None)


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    own = arguments(argv)
    run_dir, nfe, split = Path(own["run_dir"]), int(own.get("nfe", "2")), own.get("split", "train")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if "cache" in own:
        cfg.paths.cache = own["cache"]
    module = load_run_module(run_dir, cfg.paths.cache)
    if module.method.name != "anyflow":
        raise SystemExit(f"{run_dir} trained method={module.method.name}; this scan is for anyflow runs")
    scorer, spec = scorer_for(cfg, split), build_eval_spec(cfg)
    spec.student_nfes, spec.progress = [nfe], False
    student = module.sampling_student()
    print(f"{run_dir}: {nfe} NFE, {scorer.metric} against the {split} split, {spec.num_samples:,} samples")
    print(f"| shift | middle jumps at | {scorer.metric} |\n|---:|---|---:|")
    for shift in (float(s) for s in own["shifts"].split(",")):
        module.method.nfe_shifts = {nfe: shift}
        times = ", ".join(f"{t:.3f}" for t in module.method.sample_times(nfe)[1:-1].tolist())
        rows, _ = evaluate_student(module.method, student, module.teacher.data_shape, scorer, spec, 0)
        value = next(r.value for r in rows if r.metric == scorer.metric)
        print(f"| {shift:g} | {times} | {value:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
