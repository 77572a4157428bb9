"""``distill-eval``: evaluate a teacher, and a trained student run, into ``results.json``.

distill-eval                                         # the digits teacher, every sampler x NFE
distill-eval run_dir=outputs/main                    # + that run's last student checkpoint
distill-eval run_dir=outputs/main eval.teacher=false # that student alone
distill-eval dataset=gmm teacher=gmm_exact eval.num_samples=5000
distill-eval run_dir=outputs/main guidance=3      # teacher and guidance-input student, both at w = 3
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from distill.build import (
    CONF_DIR,
    build_datamodule,
    build_eval_spec,
    build_scorer,
    build_teacher,
)
from distill.errors import friendly_errors
from distill.evaluation.plots import save_sample_sets
from distill.evaluation.results import RESULTS_NAME, ResultRow, append_results
from distill.evaluation.runner import evaluate_student, evaluate_teacher
from distill.runs import load_run_module, run_dir_of
from distill.students.guidance_input import no_guidance_input, takes_guidance
from distill.table import format_rows


def evaluate(cfg: DictConfig) -> list[ResultRow]:
    out = run_dir_of(cfg)
    guidance = cfg.get("guidance")
    if guidance is not None:  # the teacher guided at w too: rows at the same w side by side
        with open_dict(cfg):
            cfg.teacher.guidance = float(guidance)
    dm = build_datamodule(cfg)
    scorer, spec, teacher = build_scorer(cfg, dm, progress=cfg.progress), build_eval_spec(cfg), build_teacher(cfg, dm)
    spec.follow_teacher(teacher)
    # A run's student alone with eval.teacher=false: re-scoring many runs needs the teacher rows once.
    rows, arrays = [], cfg.eval.get("save_arrays", False)
    if cfg.eval.teacher or not cfg.run_dir:
        rows, samples = evaluate_teacher(teacher, teacher.data_shape, scorer, spec)
        save_sample_sets(out / "samples", "teacher", samples, arrays)
    if cfg.run_dir:
        module = load_run_module(Path(cfg.run_dir), cfg.paths.cache)
        student = module.sampling_student()
        if guidance is not None and not takes_guidance(student):
            raise no_guidance_input(guidance)
        spec.guidance = None if guidance is None else float(guidance)
        student_rows, samples = evaluate_student(
            module.method, student, teacher.data_shape, scorer, spec, int(module.step_count)
        )
        save_sample_sets(out / "samples", "student", samples, arrays)
        rows += student_rows
    append_results(out / RESULTS_NAME, rows)
    print(format_rows(rows, title=f"evaluation on {dm.name} -> {out / RESULTS_NAME}"))
    return rows


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
