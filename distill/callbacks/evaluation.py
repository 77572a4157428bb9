"""Evaluate teacher and student during training with the same code as ``distill-eval``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from distill.evaluation.plots import save_samples_array, save_samples_png
from distill.evaluation.results import RESULTS_NAME, ResultRow, append_results, write_results
from distill.evaluation.runner import (
    EvalSpec,
    evaluate_flow_map,
    evaluate_student,
    evaluate_teacher,
    teacher_ode_endpoints,
)
from distill.evaluation.scorer import Scorer
from distill.lit.sharding import is_sharded


def log_rows(pl_module: L.LightningModule, rows: list[ResultRow], step: int) -> None:
    metrics = {f"eval/{r.model}/{r.sampler}/nfe{r.nfe}/{r.metric}": r.value for r in rows}
    for logger in pl_module.loggers:
        logger.log_metrics(metrics, step=step)


def log_image(pl_module: L.LightningModule, key: str, path: Path, step: int) -> None:
    for logger in pl_module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np
            from PIL import Image

            logger.experiment.add_image(key, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")


RESULT_COLUMNS = ("model", "sampler", "nfe", "metric", "value", "num_samples", "step")


def log_results_table(pl_module: L.LightningModule, rows: list[ResultRow], results_file: Path) -> None:
    """The run's result rows as a W&B table, and ``results.json`` as a versioned artifact, so runs
    compare in the dashboard and ``distill-table`` can be fed from downloaded artifacts."""
    for logger in pl_module.loggers:
        if isinstance(logger, WandbLogger) and rows:
            import wandb

            logger.log_table(
                key="results",
                columns=list(RESULT_COLUMNS),
                data=[[getattr(r, c) for c in RESULT_COLUMNS] for r in rows],
            )
            artifact = wandb.Artifact(f"results-{logger.experiment.id}", type="results")
            artifact.add_file(str(results_file))
            logger.experiment.log_artifact(artifact)


class EvaluationCallback(L.Callback):
    """Teacher rows once at fit start; student rows every ``every_n_steps`` and at the end.

    Rows go to ``<run_dir>/results.json``, metrics and PNG grids to the loggers and ``samples/``;
    each sample set logs its main metric and the scorer's collapse metrics (class_tv, recall, ...)
    side by side, so a collapsing student shows before its main metric moves.
    With ``flow_map_error``, each student evaluation also scores its one-step map against the
    teacher's ODE endpoints from the same noise (exact for the analytic GMM teacher).
    With ``save_arrays``, every sample set is also saved whole, as an ``.npy`` beside its grid.
    """

    def __init__(
        self,
        scorer: Scorer,
        spec: EvalSpec,
        shape: tuple[int, ...],
        run_dir: str | Path,
        evaluate_teacher: bool = True,
        every_n_steps: int = 0,
        flow_map_error: bool = False,
        save_arrays: bool = False,
    ):
        self.scorer, self.spec, self.shape = scorer, spec, tuple(shape)
        self.run_dir = Path(run_dir)
        self.evaluate_teacher, self.every_n_steps = evaluate_teacher, every_n_steps
        self.flow_map_error, self.save_arrays = flow_map_error, save_arrays
        self.endpoints: Tensor | None = None
        self.rows: list[ResultRow] = []

    def _record(
        self, trainer: L.Trainer, pl_module, rows: list[ResultRow], samples: dict[str, Tensor], step: int, tag: str
    ) -> None:
        self.rows.extend(rows)
        if not trainer.is_global_zero:
            return
        append_results(self.run_dir / RESULTS_NAME, rows)
        log_rows(pl_module, rows, step)
        for name, x in samples.items():
            sampler, nfe = name.split("@")
            path = save_samples_png(
                x, self.run_dir / "samples" / f"{tag}_{sampler}_nfe{nfe}_step{step}.png", f"{tag} {sampler} NFE={nfe}"
            )
            log_image(pl_module, f"samples/{tag}/{sampler}/nfe{nfe}", path, step)
            if self.save_arrays:
                save_samples_array(x, path.with_suffix(".npy"))

    # --- resuming: the rows so far travel in the checkpoint, results.json is rewritten from them --
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [ResultRow(**r) for r in state["rows"]]

    @staticmethod
    def _takes_part(trainer: L.Trainer, network) -> bool:
        """Rank zero evaluates. A sharded network's every forward is a collective, so then every rank
        runs the same sampling with it (and only rank zero writes)."""
        return trainer.is_global_zero or is_sharded(network)

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.spec.follow_teacher(pl_module.teacher)
        if trainer.is_global_zero:
            # A resumed run drops rows written after its checkpoint (they come again); a fresh one starts empty.
            write_results(self.run_dir / RESULTS_NAME, self.rows)
        teacher_rows = any(r.model == "teacher" for r in self.rows)
        if self.evaluate_teacher and not teacher_rows and self._takes_part(trainer, pl_module.teacher):
            rows, samples = evaluate_teacher(pl_module.teacher, self.shape, self.scorer, self.spec, 0, pl_module.device)
            keep = {k: v for k, v in samples.items() if int(k.split("@")[1]) in self.spec.student_nfes}
            self._record(trainer, pl_module, rows, keep, 0, "teacher")

    def _evaluate_student(self, trainer: L.Trainer, pl_module) -> None:
        step = int(pl_module.step_count)
        done = any(r.model == "student" and r.step == step for r in self.rows)
        if done or not self._takes_part(trainer, pl_module.student):
            return
        student = pl_module.sampling_student()
        rows, samples = evaluate_student(
            pl_module.method, student, self.shape, self.scorer, self.spec, step, pl_module.device
        )
        if self.flow_map_error:
            if self.endpoints is None:
                self.endpoints = teacher_ode_endpoints(
                    pl_module.teacher, self.shape, self.spec, device=pl_module.device
                )
            rows.append(
                evaluate_flow_map(
                    pl_module.method, student, self.endpoints, self.shape, self.spec, step, pl_module.device
                )
            )
        self._record(trainer, pl_module, rows, samples, step, "student")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = int(pl_module.step_count)
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._evaluate_student(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._evaluate_student(trainer, pl_module)
        if trainer.is_global_zero:
            log_results_table(pl_module, self.rows, self.run_dir / RESULTS_NAME)
