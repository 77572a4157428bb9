"""``distill-train``: distil a teacher into a few-step student, then evaluate both.

distill-train                                   # digits teacher, progressive distillation
distill-train -m method=progressive seed=0,1,2  # a sweep
"""

from __future__ import annotations

import hydra
import torch
import wandb
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from distill.build import (
    CONF_DIR,
    apply_batch_plan,
    build_datamodule,
    build_eval_spec,
    build_module,
    build_scorer,
    build_speedups,
    build_teacher,
    build_trainer,
)
from distill.callbacks import EvaluationCallback
from distill.callbacks.final_checkpoint import FinalCheckpoint
from distill.callbacks.preemption import PreemptionCallback
from distill.callbacks.rank_seed import RankSeed
from distill.callbacks.resume import LAST, RunState, find_resume_point
from distill.config_schema import validate_train_config
from distill.errors import friendly_errors
from distill.evaluation.results import RESULTS_NAME, ResultRow, append_results
from distill.lit.distill import DistillModule
from distill.lit.memory import MIB, module_memory_bytes, optimizer_memory_bytes, peak_memory_bytes
from distill.runs import run_dir_of
from distill.table import format_rows


def memory_rows(module: DistillModule, optimizers: list, device: torch.device, method: str) -> list[ResultRow]:
    """``model_memory_mb`` (teacher, student, EMA copies and the method's nets, shared tensors once),
    ``optimizer_memory_mb`` (their optimizers' state), both this rank's (its shards under FSDP), and
    ``peak_memory_mb`` (CUDA: peak allocated this fit; CPU: peak RSS, Python runtime and data included), in MiB."""
    figures = {
        "model_memory_mb": module_memory_bytes(module),
        "optimizer_memory_mb": optimizer_memory_bytes(*optimizers),
        "peak_memory_mb": peak_memory_bytes(device),
    }
    step = int(module.step_count)
    return [ResultRow("student", method, 0, metric, value / MIB, 0, step) for metric, value in figures.items()]


def format_memory(rows: list[ResultRow], device: torch.device) -> str:
    figures = {r.metric: r.value for r in rows}
    peak = "peak allocated" if device.type == "cuda" else "peak RSS of the process"
    return (
        f"memory: model {figures['model_memory_mb']:.1f} MiB, optimizer state "
        f"{figures['optimizer_memory_mb']:.1f} MiB, {peak} {figures['peak_memory_mb']:.1f} MiB"
    )


def train(cfg: DictConfig) -> list[ResultRow]:
    """Distil, evaluate, and return the result rows written to ``<run_dir>/results.json``."""
    validate_train_config(cfg)  # a mistyped or impossible config fails here, before anything is built
    batches = apply_batch_plan(cfg)  # global batch and images -> per-device batch and steps, before anything reads them
    run_dir = run_dir_of(cfg)
    checkpoint_dir = run_dir / "checkpoints"
    resume = find_resume_point(cfg.ckpt_path, checkpoint_dir, cfg.method.name)
    seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    teacher = build_teacher(cfg, dm)
    # A resumed student comes from its checkpoint.
    module = build_module(cfg, teacher, init=resume is None, micro_batches=batches.accumulation)
    evaluation = EvaluationCallback(
        build_scorer(cfg, dm, progress=cfg.progress),
        build_eval_spec(cfg),
        teacher.data_shape,
        run_dir,
        evaluate_teacher=cfg.eval.teacher,
        every_n_steps=cfg.eval.every_n_steps,
        flow_map_error=cfg.eval.flow_map_error,
        save_arrays=cfg.eval.get("save_arrays", False),
    )
    # No version counter: a last.ckpt that the preemption or final-step callback wrote is the run's
    # own, to overwrite, not to keep beside a new last-v1.ckpt (distill-eval reads last.ckpt).
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        save_last=True,
        every_n_train_steps=cfg.train.checkpoint_every,
        enable_version_counter=False,
    )
    callbacks = [
        evaluation,
        RunState(cfg.method.name),
        PreemptionCallback(checkpoint_dir / LAST),
        FinalCheckpoint(checkpoint_dir / LAST, cfg.train.checkpoint_every),
        checkpoints,
        RankSeed(cfg.seed),
        build_speedups(cfg),
    ]
    trainer = build_trainer(cfg, run_dir, callbacks, module.optimizer_steps_bound(module.max_batches), resume)
    if resume is not None:
        print(f"resuming from {resume.path} (optimizer step {resume.step})")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume.path if resume else None)
    finally:
        wandb.finish()  # multirun jobs must not share one W&B run
    if not trainer.is_global_zero:
        return evaluation.rows
    device = trainer.strategy.root_device  # the module itself is back on the CPU after fit
    memory = memory_rows(module, trainer.optimizers, device, cfg.method.name)
    append_results(run_dir / RESULTS_NAME, memory)
    if evaluation.rows:
        print(format_rows(evaluation.rows, title=f"{cfg.method.name} on {dm.name} (run dir: {run_dir})"))
    print(format_memory(memory, device))
    return evaluation.rows + memory


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
