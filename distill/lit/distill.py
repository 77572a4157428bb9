"""``DistillModule``: the one LightningModule every distillation method runs in.

It owns the frozen teacher (excluded from checkpoints), the student, the student-only EMA and
the method (with whatever auxiliary networks the method owns). Optimization is manual so that
methods with several optimizers (generator, fake score, discriminator) alternate by the rule in
``method.phases``; gradient clipping is therefore done here, and so is skipping a step whose loss
or gradient is not finite (``nan_guard``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import nn

from distill.core.conditioning import GUIDANCE, Condition, conditioned, draw_guidance
from distill.core.lr_schedule import lr_factor
from distill.errors import CheckpointError, DivergenceError
from distill.lit.ema import EMAStack
from distill.lit.memory import reset_peak_memory
from distill.lit.nan_guard import (
    BadStepGuard,
    divergence_message,
    grad_norm,
    nonfinite_terms,
    nonfinite_weights,
)
from distill.lit.sharding import FullyShardedStrategy, is_sharded
from distill.methods.base import Method, label_condition, label_count
from distill.students.guidance_input import guidance_groups, raise_guidance_lr

TEACHER_PREFIX = "teacher."


class DistillModule(L.LightningModule):
    """Args:
    teacher: frozen velocity model.
    student: trainable velocity model (or generator).
    method: the objective.
    optimizer: ``params -> torch.optim.Optimizer`` (a Hydra partial).
    ema_decays: student EMA decays; empty keeps no EMA.
    grad_clip: max global grad norm per optimizer step (0 disables).
    max_batches: training length in batches (Lightning's ``max_steps`` counts optimizer steps,
        which multi-optimizer methods take several of per batch); None leaves it to the Trainer.
    max_bad_steps: non-finite steps in a row (each skipped, ``nan_guard``) that stop the run.
    micro_batches: parts each batch is run in, gradients accumulated (``distill.lit.batching``).
    lr_schedule, lr_warmup_steps, lr_decay_steps: ``train.lr_*``: every optimizer's lr is its base lr
        times ``distill.core.lr_schedule.lr_factor`` at ``step_count`` (batches done) times the method's
        ``lr_scale``.
    guidance_range: ``(low, high)``: every training sample gets its own guidance scale, drawn by
        ``distill.core.conditioning.draw_guidance``, in the batch's condition (the teacher guides it
        at that scale, a guidance-input student reads it); None: the teacher's fixed ``guidance``.
    guidance_lr_scale: the student's guidance-embedding lr / its optimizer's lr (``student.guidance_lr_scale``).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        method: Method,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        ema_decays: Sequence[float] = (),
        grad_clip: float = 1.0,
        max_batches: int | None = None,
        max_bad_steps: int = 10,
        micro_batches: int = 1,
        lr_schedule: str = "constant",
        lr_warmup_steps: int = 0,
        lr_decay_steps: int | None = None,
        guidance_range: tuple[float, float] | None = None,
        guidance_lr_scale: float = 1.0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.teacher = teacher
        self.student = student
        self.method = method
        method.attach(teacher, student)  # auxiliary nets exist before configure_optimizers
        self.ema = EMAStack(student, ema_decays)
        self.optimizer_factory = optimizer
        self.grad_clip = grad_clip
        self.base_lrs: dict[str, list[float]] = {}
        self.max_batches = max_batches
        # One count per training batch, whatever the number of optimizer steps in it; checkpointed.
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        self.bad_steps = BadStepGuard(max_bad_steps)
        self.micro_batches = micro_batches
        self.lr_schedule = dict(schedule=lr_schedule, warmup_steps=lr_warmup_steps, decay_steps=lr_decay_steps)
        lr_factor(0, **self.lr_schedule)  # a bad schedule fails here, not at the first step
        self.guidance_range, self.guidance_lr_scale = guidance_range, guidance_lr_scale
        self.checkpoint_groups: list[int] = []  # a resumed checkpoint's optimizer group counts (on_load_checkpoint)

    # --- checkpoints never carry the teacher ---------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith(TEACHER_PREFIX)}

    def prepare_to_load(self, state_dict: dict[str, Any]) -> None:
        """Grow the method's state (snapshots, pair buffers) to what ``state_dict`` holds."""
        method_state = {k.removeprefix("method."): v for k, v in state_dict.items() if k.startswith("method.")}
        self.method.prepare_to_load(method_state, self.student)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        self.prepare_to_load(state_dict)
        missing_teacher = {k for k in super().state_dict() if k.startswith(TEACHER_PREFIX)}
        try:
            result = super().load_state_dict(state_dict, strict=False, assign=assign)
        except RuntimeError as err:  # shapes differ: another student architecture
            raise CheckpointError(f"checkpoint does not match this method/student: {err}") from err
        if strict:
            missing = set(result.missing_keys) - missing_teacher
            if missing or result.unexpected_keys:
                raise CheckpointError(
                    f"checkpoint does not match this method/student: missing {sorted(missing)[:5]}, "
                    f"unexpected {sorted(result.unexpected_keys)[:5]}"
                )
        return result

    # --- sharding ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under FSDP every network is sharded here, before the optimizers are built over the shards."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FullyShardedStrategy):
            strategy.shard(self)

    @property
    def sharded(self) -> bool:
        """Whether the networks are sharded over the ranks: every forward is then a collective, so
        evaluation and sampling run on every rank in step (rank zero alone would wait forever)."""
        return is_sharded(self.student)

    # --- optimization ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        reset_peak_memory(self.device)  # the peak reported after training is this fit's, not an earlier one's

    def configure_optimizers(self):
        opts = []
        for name in self.method.optimizer_names:
            params = list(self.method.trainable_parameters(name, self.student))
            if self.guidance_lr_scale != 1:
                params = guidance_groups(params, self.student)
            opt = self.optimizer_factory(params)
            raise_guidance_lr(opt, self.guidance_lr_scale)
            self.base_lrs[name] = [g["lr"] for g in opt.param_groups]
            opts.append(opt)
        self.check_resumed_groups([len(opt.param_groups) for opt in opts])
        return opts

    def check_resumed_groups(self, groups: list[int]) -> None:
        """Refuse, with the likely cause, optimizers whose parameter groups differ from the checkpoint's
        being resumed (torch would say only "a different number of parameter groups")."""
        saved = self.checkpoint_groups
        if saved and saved != groups:
            raise CheckpointError(
                f"the checkpoint being resumed has optimizer parameter groups {saved}, this run's config builds "
                f"{groups}: resume with the settings it was trained with (a run from before "
                "student.guidance_lr_scale existed resumes with student.guidance_lr_scale=1)"
            )

    def _optimizers_by_name(self) -> dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return dict(zip(self.method.optimizer_names, opts, strict=True))

    def training_step(self, batch, batch_idx: int):
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        step = int(self.step_count)
        opts = self._optimizers_by_name()
        logs: dict[str, torch.Tensor] = {}
        bad: list[str] = []
        for phase in self.method.phases(step):
            opt = opts[phase]
            scale = self.method.lr_scale(phase, step) * lr_factor(step, **self.lr_schedule)
            for group, base in zip(opt.param_groups, self.base_lrs[phase], strict=True):
                group["lr"] = base * scale
            opt.zero_grad(set_to_none=True)
            terms = self.loss_and_backward(phase, batch, x0, step)
            params = [p for g in opt.param_groups for p in g["params"]]
            if (bound := self.method.grad_value_clip(phase)) > 0:  # a NaN stays NaN for the guard below
                torch.nn.utils.clip_grad_value_(params, bound)
            norm = grad_norm(params, self.grad_clip)
            logs.update({f"{phase}/{k}": v.detach() for k, v in terms.items()})
            logs[f"{phase}/lr"] = torch.tensor(opt.param_groups[0]["lr"])
            bad = self._nonfinite(phase, terms, norm)
            if bad:
                opt.zero_grad(set_to_none=True)  # nothing of this step reaches weights, moments or EMA
                break
            if self.grad_clip > 0:
                logs[f"{phase}/grad_norm"] = norm
            opt.step()
        diverged = self.bad_steps.record(bool(bad))
        logging = self._logs_this_step(step)
        if logging:
            self.log_dict(logs, prog_bar=False, on_step=True)
            self.log("train/skipped_steps", float(self.bad_steps.skipped), on_step=True)
        if diverged:
            raise DivergenceError(divergence_message(step, self.bad_steps.in_a_row, bad, self._last_checkpoint()))
        if bad:
            return
        self.ema.update(self.student)
        self.step_count += 1
        for name in self.method.on_step_end(step, self.student):
            opts[name].state.clear()
        if logging:
            self.log("loss", logs[f"{self.method.phases(step)[0]}/loss"], prog_bar=True, on_step=True)
        if self.finished:
            self.trainer.should_stop = True

    @property
    def finished(self) -> bool:
        """Whether every batch of the run has trained (``max_batches`` of them)."""
        return self.max_batches is not None and int(self.step_count) >= self.max_batches

    def _logs_this_step(self, step: int) -> bool:
        """Whether this batch's metrics reach the logger: every ``log_every_n_steps`` batches and the last.

        Lightning drops step metrics logged in between, yet each ``self.log`` call still costs about a
        millisecond (it moves its result holder to the device): a dozen terms on every batch were ~4% of
        a CPU step on digits (experiments/bench.py).
        """
        every = self.trainer.log_every_n_steps
        last = self.max_batches is not None and step + 1 >= self.max_batches
        # Lightning's own rule: the batch that completes a multiple of log_every_n_steps, or a stopping one.
        return every > 0 and ((step + 1) % every == 0 or last or self.trainer.should_stop)

    def loss_and_backward(self, phase: str, batch, x0: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The phase's loss terms, back-propagated. With ``micro_batches`` k > 1 the batch runs in k equal
        parts (gradient accumulation: one part's activations at a time; DDP syncs after the last), each
        loss scaled by 1/k, so the gradient is the whole batch's; the terms returned are the parts' mean."""
        k = self.micro_batches
        if k == 1:
            with conditioned(self.batch_condition(batch)):  # conditional nets read the batch's labels / prompts
                terms = self.method.loss(phase, x0, self.teacher, self.student, step)
            self.manual_backward(terms["loss"])
            return terms
        if len(x0) % k:
            raise ValueError(f"a batch of {len(x0)} does not split into {k} micro-batches")
        size = len(x0) // k
        total: dict[str, torch.Tensor] = {}
        for i in range(k):
            part = slice(i * size, (i + 1) * size)
            last = i == k - 1
            sync = nullcontext() if last or not hasattr(self.trainer.model, "no_sync") else self.trainer.model.no_sync()
            piece = [b[part] for b in batch] if isinstance(batch, (list, tuple)) else batch[part]
            with conditioned(self.batch_condition(piece)), sync:
                terms = self.method.loss(phase, x0[part], self.teacher, self.student, step)
                self.manual_backward(terms["loss"] / k)
            for key, value in terms.items():
                total[key] = total.get(key, 0) + value.detach() / k
        return total

    def _nonfinite(self, phase: str, terms: dict[str, torch.Tensor], norm: torch.Tensor) -> list[str]:
        """The non-finite terms of this phase (every rank skips when any rank has one)."""
        checked = {f"{phase}/loss": terms["loss"].detach()}
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:  # fp16's scaler skips inf grads itself
            checked[f"{phase}/grad_norm"] = norm
        bad = nonfinite_terms(checked)
        if bad:
            bad += [f"{phase}/{k}" for k in nonfinite_terms(terms) if k != "loss"]
        if self.trainer.world_size > 1 and self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            bad = bad or ["loss or gradient on another rank"]
        return bad

    def _last_checkpoint(self) -> str | None:
        saver = self.trainer.checkpoint_callback
        return getattr(saver, "last_model_path", None) or self.trainer.ckpt_path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_weights(self)
        if self.sharded and self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            bad = bad or ["a shard on another rank"]  # every rank refuses together: the save is collective
        if bad:  # raised before anything is written: the previous checkpoint stays the last good one
            raise CheckpointError(
                f"refusing to checkpoint non-finite weights ({', '.join(bad[:3])}) at step "
                f"{int(self.step_count)}; the last good checkpoint is {self._last_checkpoint()}"
            )
        checkpoint["bad_steps"] = self.bad_steps.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "bad_steps" in checkpoint:
            self.bad_steps.load_state_dict(checkpoint["bad_steps"])
        # Lightning restores the optimizers after configure_optimizers: it checks their groups against these.
        self.checkpoint_groups = [len(state["param_groups"]) for state in checkpoint.get("optimizer_states", [])]

    def on_train_batch_start(self, batch, batch_idx: int) -> int | None:
        if self.finished:
            self.trainer.should_stop = True  # a finished run that resumes (to finish its evaluation) trains no more
            return -1
        return None

    def optimizer_steps_bound(self, batches: int) -> int:
        """Lightning's ``max_steps`` for ``batches`` batches: every optimizer may step every batch, plus one,
        so that a finished run that resumes still enters the loop and runs its end-of-training hooks."""
        return batches * len(self.method.optimizer_names) + 1

    def batch_condition(self, batch) -> Condition | None:
        """The batch's condition: its captions' prompt embeddings for a text-conditional teacher, its
        labels for a class-conditional one, else None; with ``guidance_range``, a guidance scale per sample."""
        if not isinstance(batch, (list, tuple)) or not label_count(self.teacher):
            return None
        condition = {k: v.to(self.device) for k, v in label_condition(self.teacher, batch[1]).items()}
        if self.guidance_range is not None:
            condition[GUIDANCE] = draw_guidance(len(batch[1]), *self.guidance_range, device=self.device)
        return condition

    def sampling_student(self) -> nn.Module:
        """The network evaluations should use: the slowest EMA, else the raw student."""
        return self.ema.best(self.student)
