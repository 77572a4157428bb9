"""``python -m distill.export_teacher``: a finished run's student as a teacher directory.

    python -m distill.export_teacher run_dir=outputs/<reflow run> out=~/.cache/distill/teachers/digits_2rf

Writes what ``distill-pretrain`` writes (``teacher.json`` + ``model.safetensors``), so the result
loads as ``teacher.path=...`` or as a member of ``teacher.ensemble``. Meant for students that are
still velocity models, e.g. the 2-rectified flow of ``method=reflow method.objective.distill=false``
(a teacher for a later round or for multi-teacher Bezier distillation); flow-map and consistency
students are refused, since a teacher is sampled by solving its velocity ODE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.build import CONF_DIR
from distill.core.io import replace_directory
from distill.errors import ConfigError, friendly_errors
from distill.nets.velocity import VelocityModel
from distill.runs import load_run_module
from distill.teachers.checkpoint import CONFIG_NAME, save_teacher


def teacher_meta(run_teacher_meta: dict[str, Any], method: str, step: int, run_dir: Path) -> dict[str, Any]:
    """The new teacher's ``teacher.json`` extras: the run teacher's, plus where the weights came from."""
    kept = {k: v for k, v in run_teacher_meta.items() if k in ("dataset", "seed")}
    return {**kept, "source_run": str(run_dir), "source_method": method, "train_steps": step}


def export_teacher(run_dir: Path, out: Path, cache: str, overwrite: bool = False) -> Path:
    """Save ``run_dir``'s sampling student (its EMA when it kept one) as a teacher at ``out`` (atomically)."""
    if (out / CONFIG_NAME).is_file() and not overwrite:
        raise ConfigError(f"out={out} already holds a teacher: choose another directory or pass overwrite=true")
    module = load_run_module(run_dir, cache)
    student = module.sampling_student()
    if type(student) is not VelocityModel:  # a subclass (flow map, average velocity) is no plain ODE velocity
        raise ConfigError(
            f"run_dir={run_dir}: method={module.method.name} trains a {type(student).__name__}, not a "
            "velocity model a teacher solves; export a run whose student stays one (e.g. "
            "method=reflow method.objective.distill=false)"
        )
    net_spec = module.teacher.meta.get("net")
    if net_spec is None:  # the student is a copy of the run teacher's net, described by its teacher.json
        raise ConfigError(
            f"run_dir={run_dir}: its teacher has no 'net' entry in teacher.json to rebuild the student from"
        )
    meta = teacher_meta(module.teacher.meta, module.method.name, int(module.step_count), run_dir)
    return replace_directory(
        out, lambda tmp: save_teacher(tmp, student.cpu().eval(), net_spec, module.teacher.data_shape, meta)
    )


@hydra.main(config_path=CONF_DIR, config_name="export_teacher", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = export_teacher(Path(cfg.run_dir), Path(cfg.out).expanduser(), cfg.paths.cache, cfg.overwrite)
    print(f"teacher from {cfg.run_dir} -> {out}")


if __name__ == "__main__":
    main()
