"""Turn a composed config into objects. Plain functions, so tests reach them without ``@hydra.main``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torch.utils.data import Dataset

from distill.callbacks.progress import StepProgressBar
from distill.callbacks.resume import ResumePoint
from distill.callbacks.speedups import Speedups
from distill.core.conditioning import table_rows
from distill.core.gmm import ring_mixture
from distill.core.io import cache_key
from distill.data import DataModule
from distill.data.datamodule import TensorPairDataset
from distill.data.prompts import PromptDataset
from distill.errors import ConfigError
from distill.evaluation.runner import EvalSpec
from distill.evaluation.scorer import Scorer, metric_for
from distill.lit.batching import BatchPlan, plan_batches
from distill.lit.checkpoint_io import AtomicCheckpointIO
from distill.lit.distill import DistillModule
from distill.lit.init_from import load_student_init
from distill.methods.base import Method, label_count
from distill.nets.dropout import set_residual_dropout
from distill.nets.factory import build_net
from distill.nets.features import has_parameters
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import fresh_student_like, student_from_teacher
from distill.students.guidance_input import (
    GUIDANCE_INPUT_METHODS,
    GUIDANCE_PARAMETERS,
    check_guidance_lr_scale,
    check_guidance_range,
    with_guidance_input,
)
from distill.students.lora import add_lora, share_frozen_weights
from distill.teachers import GMMTeacher, Teacher, load_teacher
from distill.teachers.diffusers_dir import encode_prompt_table, load_diffusers_teacher
from distill.teachers.edm import load_edm_teacher
from distill.teachers.latent import LatentCodec, encode_images
from distill.teachers.samples import samples_key, teacher_samples

# Absolute, so console scripts (whose calling module Hydra cannot map to a path) find it too.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def as_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


SECRET_WORDS = ("key", "token", "secret", "password")


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config for the dashboard: no Hydra internals, nothing secret-looking."""

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if not any(w in str(k).lower() for w in SECRET_WORDS)}
        return [scrub(v) for v in node] if isinstance(node, list) else node

    plain = {k: cfg[k] for k in cfg if k != "hydra"}
    return scrub(OmegaConf.to_container(OmegaConf.create(plain), resolve=True))


def world_size(hardware: DictConfig) -> int:
    """Processes the Trainer will run: devices per node x nodes (``auto``/-1: every visible GPU, or one CPU)."""
    devices = hardware.devices
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif devices in ("auto", -1, "-1"):
        gpu = hardware.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        count = int(devices)
    return count * int(hardware.get("num_nodes", 1))


def apply_batch_plan(cfg: DictConfig) -> BatchPlan:
    """Derive the run's batch split (``distill.lit.batching``) and write the per-device batch and the
    step count into ``train.batch_size`` and ``train.max_steps``, which everything downstream reads.

    Without ``train.global_batch_size`` the global batch is ``train.batch_size`` per device; without
    ``train.images`` the length is ``train.max_steps``.
    """
    world = world_size(cfg.hardware)
    plan = plan_batches(
        cfg.train.get("global_batch_size") or cfg.train.batch_size * world,
        world,
        steps=cfg.train.max_steps,
        images=cfg.train.get("images"),
        max_device_batch=cfg.train.get("max_device_batch"),
    )
    with open_dict(cfg.train):
        cfg.train.batch_size, cfg.train.max_steps = plan.device_batch, plan.steps
    return plan


def build_speedups(cfg: DictConfig) -> Speedups:
    hw = cfg.hardware
    return Speedups(
        compile=hw.get("compile", False),
        activation_checkpointing=hw.get("activation_checkpointing", False),
        channels_last=hw.get("channels_last", False),
    )


def build_datamodule(cfg: DictConfig) -> DataModule:
    dm = DataModule(
        **as_dict(cfg.dataset), batch_size=cfg.train.batch_size, num_workers=cfg.hardware.num_workers, seed=cfg.seed
    )
    dm.setup()
    return dm


def build_teacher(cfg: DictConfig, dm: DataModule) -> Teacher:
    """The frozen teacher named by ``cfg.teacher``, checked against the dataset's shape."""
    kind = cfg.teacher.kind
    if kind == "gmm_exact":
        if dm.name != "gmm":
            raise ConfigError(f"teacher=gmm_exact is the exact field of dataset=gmm, not dataset={dm.name}")
        teacher: Teacher = GMMTeacher(ring_mixture(**as_dict(cfg.teacher.mixture)))
    elif kind == "checkpoint":
        teacher = load_teacher(cfg.teacher.path)
        if cfg.teacher.get("train_dropout") is not None:  # the rate of its trained copies (student, fake score)
            set_residual_dropout(teacher.model, float(cfg.teacher.train_dropout))
    elif kind == "diffusers":
        teacher = load_diffusers_teacher(
            cfg.teacher.path,
            dm.data_shape[-1],
            cfg.teacher.get("embedded_guidance"),
            cfg.teacher.get("max_sequence_length"),
            cfg.teacher.get("dtype"),
        )
    elif kind == "edm":  # an EDM / EDM2 pickle, converted once into the cache (no code from it is run)
        teacher = load_edm_teacher(
            cfg.teacher.path,
            Path(cfg.paths.cache) / "teachers" / "edm",
            float(cfg.teacher.get("guidance", 1.0)),
            cfg.teacher.get("train_dropout"),
        )
    else:
        raise ConfigError(f"teacher.kind={kind!r} is unknown; choose checkpoint, diffusers, edm or gmm_exact")
    teacher.guidance = float(cfg.teacher.get("guidance", 1.0))
    if teacher.guidance != 1.0 and teacher.null_condition is None:
        raise ConfigError(
            f"teacher.guidance={teacher.guidance} needs a conditional teacher; "
            f"{cfg.teacher.get('path', kind)} is unconditional (pretrain one with conditional=true)"
        )
    if teacher.num_classes and teacher.num_classes != dm.num_classes:
        raise ConfigError(
            f"the teacher is conditioned on {teacher.num_classes} classes but dataset={dm.name} has "
            f"{dm.num_classes or 'no'} labels: pick a dataset with its classes or an unconditional teacher"
        )
    teacher.prompt_table = prompt_table_for(cfg, dm, teacher)
    codec = teacher.codec
    pixels = codec.pixel_shape(teacher.data_shape) if codec is not None else tuple(teacher.data_shape)
    if tuple(pixels) != tuple(dm.data_shape):
        raise ConfigError(
            f"teacher at {cfg.teacher.get('path', kind)} makes samples of shape {tuple(pixels)} but "
            f"dataset={dm.name} has shape {tuple(dm.data_shape)}: pick the matching teacher or set "
            "dataset.resolution/channels to the teacher's"
        )
    if dm.prompt_only:  # no images: the teacher's own samples stand in for them
        dm.use_training_set(prompt_only_training_set(cfg, dm, teacher))
    elif codec is not None:  # train in latent space: the training images, encoded once (cached)
        dm.use_training_set(latent_training_set(cfg, dm, codec))
    return teacher


def latent_training_set(cfg: DictConfig, dm: DataModule, codec: LatentCodec) -> TensorPairDataset:
    images, labels = dm.train_tensor(), dm.train_labels()
    key = cache_key(repr((dm.name, tuple(images.shape), float(images.double().sum()))))
    latents = encode_images(images, codec, Path(cfg.paths.cache) / "latents", key, progress=cfg.get("progress", False))
    return TensorPairDataset(latents, labels)


def prompt_only_training_set(cfg: DictConfig, dm: DataModule, teacher: Teacher) -> Dataset:
    """``dataset=prompts``: the teacher's guided samples for the prompts (``dataset.sample_steps`` Heun
    steps, cached) are the rows of methods that noise data (``data_role`` marginal) and the evaluation
    reference (unless ``eval.reference_stats``); methods that need real images are refused."""
    method = build_method(cfg)
    if method.data_role == "real":
        raise ConfigError(
            f"method={cfg.method.name} compares with real images (data_role=real), and dataset=prompts "
            "has none: train it on captioned images (dataset=image_folder dataset.captions=true), or "
            "pick a data-free method (progressive, consistency, scd, pcm, dmd2 without a real-data GAN, "
            "arcflow, bezier, reflow)"
        )
    table = teacher.prompt_table
    if table is None:
        raise ConfigError(
            f"dataset=prompts needs a text-conditional teacher; {cfg.teacher.get('path')} takes no "
            "prompts: use dataset=image_folder (or another image set) with it"
        )
    labels, reference = dm.train_labels(), not cfg.eval.get("reference_stats")
    count = len(labels) if method.data_role == "marginal" else min(len(labels), cfg.eval.num_reference) * reference
    placeholder = PromptDataset(dm.captions, teacher.data_shape, dm.repeats)
    if count == 0:
        return placeholder
    digest = [(k, tuple(v.shape), float(v.double().sum())) for k, v in table_rows(table, labels[:count]).items()]
    key = samples_key(teacher.meta, teacher.guidance, teacher.data_shape, dm.sample_steps, count, cfg.seed, digest)
    gpu = cfg.hardware.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu"  # each rank its own GPU
    samples = teacher_samples(
        teacher,
        lambda rows: table_rows(table, rows),
        labels[:count],
        teacher.data_shape,
        dm.sample_steps,
        Path(cfg.paths.cache) / "teacher_samples" / key,
        cfg.seed,
        device,
        progress=cfg.get("progress", False),
    )
    if reference:
        shown, codec = samples[: cfg.eval.num_reference], teacher.codec
        dm.use_reference(
            torch.cat([codec.decode(shown[i : i + 16]) for i in range(0, len(shown), 16)])
            if codec is not None
            else shown
        )  # scored in pixels
    return TensorPairDataset(samples, labels) if method.data_role == "marginal" else placeholder


def prompt_table_for(cfg: DictConfig, dm: DataModule, teacher: Teacher):
    """A text-conditional teacher's embeddings of the dataset's captions (row = image label), encoded
    once with the teacher's own text encoder and cached in ``paths.cache``; None for other teachers."""
    if not getattr(teacher.model, "text", False):
        return None
    if not dm.captions:
        raise ConfigError(
            f"the teacher at {cfg.teacher.path} is text-conditional: train on captioned images "
            "(dataset=image_folder dataset.captions=true, a <image stem>.txt beside each image)"
        )
    return encode_prompt_table(dm.captions, teacher, Path(cfg.paths.cache) / "prompt_embeds")


def build_student(cfg: DictConfig, teacher: Teacher) -> nn.Module:
    """A copy of the teacher's network (``init: teacher``), its architecture with new weights
    (``init: fresh``) or a network of its own (``init: random``, ``student.net``)."""
    if cfg.student.init in ("teacher", "fresh"):
        if not has_parameters(teacher.model):
            raise ConfigError(f"teacher {teacher.meta.get('kind')} has no network to copy: use student=mlp")
        if cfg.student.init == "teacher":
            return student_from_teacher(teacher.model)
        try:
            return fresh_student_like(teacher.model)
        except ValueError as err:
            raise ConfigError(f"student=fresh: {err}") from err
    if cfg.student.init == "random":
        net = build_net(as_dict(cfg.student.net), teacher.data_shape)
        return VelocityModel(net, cfg.student.scheme)
    raise ConfigError(f"student.init={cfg.student.init!r} is unknown; choose teacher, fresh or random")


def with_lora(cfg: DictConfig, student: nn.Module, method: Method, teacher: Teacher) -> nn.Module:
    """``student.lora`` set: freeze the student's body, add LoRA adapters, train the method's new
    parameters fully, and share the frozen weights with the teacher's (one copy in memory)."""
    lora = cfg.student.get("lora")
    if not lora:
        return student
    try:
        add_lora(
            student,
            lora.rank,
            lora.alpha,
            lora.targets,
            lora.dropout,
            [*lora.get("train_fully", []), *method.fresh_parameters, *guidance_parameters(cfg)],
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if lora.get("share_with_teacher", True) and cfg.student.init == "teacher":
        share_frozen_weights(student, teacher.model)
    return student


def guidance_parameters(cfg: DictConfig) -> list[str]:
    """The guidance input's parameters, new in a ``student.guidance_range`` student: LoRA trains them fully."""
    return [GUIDANCE_PARAMETERS] if cfg.student.get("guidance_range") is not None else []


def instantiation_message(err: InstantiationException) -> str:
    """Hydra's multi-line "Error in call to target ..." as one line that starts with the failing key.

    A method's own ``ConfigError`` already names its ``method.objective.<x>`` key; inside a composite
    (``method.objective.terms.<term>``) the key is moved under the node that failed.
    """
    text = str(err)
    found = re.search(r"^full_key: (\S+)$", text, flags=re.MULTILINE)
    key = found.group(1) if found else "method"
    cause = err.__cause__
    if isinstance(cause, ConfigError):
        return str(cause).replace("method.objective.", f"{key}.") if key != "method.objective" else str(cause)
    if text.startswith("Error locating target"):
        target = re.search(r"'([^']*)'", text)
        return (
            f"{key}._target_={target.group(1) if target else '?'} cannot be imported: check its module and class name"
        )
    detail = str(cause) if cause is not None and text.startswith("Error in call to target") else text
    detail = " ".join(line for line in detail.splitlines() if not line.startswith("full_key:"))
    return f"{key}: {' '.join(detail.split())}"


def instantiate_config(node: DictConfig) -> Any:
    """``hydra.utils.instantiate``, whose failures become one-line ``ConfigError``s naming the key."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        raise ConfigError(instantiation_message(err)) from err


def build_method(cfg: DictConfig) -> Method:
    return instantiate_config(cfg.method.objective)


def build_optimizer(cfg: DictConfig):
    return instantiate_config(cfg.method.optimizer)


def build_module(cfg: DictConfig, teacher: Teacher, init: bool = True, micro_batches: int = 1) -> DistillModule:
    """Student, method (fitted to the run's budget) and optimizer around ``teacher``.

    With ``init`` and ``cfg.init_from`` set, the student (and so its EMA copies) starts from that
    run's student weights; reloading a finished run passes ``init=False``, its checkpoint wins.
    ``micro_batches`` is the batch plan's gradient accumulation (``distill.lit.batching``).
    """
    if init and cfg.get("after") and not cfg.get("init_from"):
        raise ConfigError(
            f"this experiment continues experiment={cfg.after}: run that first, then pass init_from=<its run dir>"
        )
    continues = cfg.method.get("continues")
    if init and continues and not cfg.get("init_from"):
        raise ConfigError(
            f"method={cfg.method.name} continues a finished method={continues} run, and init_from is not set: "
            f"train that run first (same dataset, teacher and student), then pass init_from=<its run dir>"
        )
    method = build_method(cfg)
    if label_count(teacher) and not method.class_conditional:  # class labels or prompts
        raise ConfigError(
            f"method={cfg.method.name} trains on its own cached pairs, which carry no class labels or "
            "prompts: use an unconditional teacher with it"
        )
    method.set_budget(cfg.train.max_steps)
    method.set_batch(cfg.train.get("global_batch_size") or cfg.train.batch_size * world_size(cfg.hardware))
    guidance_range = guidance_range_for(cfg, method, teacher)
    guidance_lr_scale = check_guidance_lr_scale(cfg.student.get("guidance_lr_scale", 1.0))
    student = build_student(cfg, teacher)

    def prepare(plain: nn.Module) -> nn.Module:  # so a LoRA run can start from a LoRA run's weights too
        if guidance_range is not None:
            plain = with_guidance_input(plain, teacher.guidance)
        return with_lora(cfg, method.prepare_student(plain), method, teacher)

    if init and cfg.get("init_from"):
        this_run = f"this run (method={cfg.method.name}, dataset={cfg.dataset.name})"
        student = load_student_init(student, cfg.init_from, cfg.get("init_from_ema", True), prepare, this_run)
    else:
        student = prepare(student)
    return DistillModule(
        teacher,
        student,
        method,
        build_optimizer(cfg),
        ema_decays=cfg.method.ema_decays,
        grad_clip=cfg.method.grad_clip,
        lr_schedule=cfg.train.get("lr_schedule", "constant"),
        lr_warmup_steps=cfg.train.get("lr_warmup_steps", 0),
        lr_decay_steps=cfg.train.get("lr_decay_steps"),
        max_batches=method.num_steps or cfg.train.max_steps,
        max_bad_steps=cfg.train.get("max_bad_steps", 10),
        micro_batches=micro_batches,
        guidance_range=guidance_range,
        guidance_lr_scale=1.0 if guidance_range is None else guidance_lr_scale,  # nothing to scale without one
    )


def guidance_range_for(cfg: DictConfig, method: Method, teacher: Teacher) -> tuple[float, float] | None:
    """``student.guidance_range``, refused where the method or the teacher cannot use it."""
    guidance_range = check_guidance_range(cfg.student.get("guidance_range"))
    if guidance_range is None:
        return None
    if not method.guidance_input:
        raise ConfigError(
            f"method={cfg.method.name} cannot train a student over a guidance range (student.guidance_range): "
            "its other networks (a fake score, a discriminator) or its cached pairs know one guidance scale. "
            f"use one of {', '.join(GUIDANCE_INPUT_METHODS)}, or set teacher.guidance instead"
        )
    if teacher.null_condition is None or not teacher.num_classes:
        raise ConfigError(
            "student.guidance_range needs a class-conditional teacher (pretrain one with conditional=true)"
        )
    return guidance_range


def build_scorer(cfg: DictConfig, dm: DataModule, progress: bool = True, reference: Tensor | None = None) -> Scorer:
    """The evaluation scorer, against ``dm``'s reference split, or ``reference`` images where given."""
    metric = cfg.eval.metric or metric_for(dm.kind, dm.name)
    if reference is None and not cfg.eval.reference_stats:
        reference = dm.reference_samples(cfg.eval.num_reference, seed=12345)
    data_root = dm.fashion_mnist_root if dm.name == "fashion_mnist" else None  # fd_fmnist's classifier trains there
    return Scorer(
        metric,
        reference,
        Path(cfg.paths.cache),
        cfg.eval.inception_weights,
        cfg.eval.reference_stats,
        progress=progress,
        data_root=data_root,
    )


def build_eval_spec(cfg: DictConfig) -> EvalSpec:
    keys = ("num_samples", "batch_size", "seed", "teacher_samplers", "teacher_nfes", "teacher_grid", "student_nfes")
    eval_cfg = as_dict(cfg.eval)
    return EvalSpec(**{k: eval_cfg[k] for k in keys}, progress=cfg.progress)


def build_loggers(cfg: DictConfig, run_dir: Path, resume: ResumePoint | None = None) -> list[Logger]:
    """The configured logger; a resumed run logs into its W&B run again, and into a new CSV file."""
    kind = cfg.logger.kind
    name = cfg.run_name
    if kind == "wandb":
        if cfg.logger.offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        run_id = resume.wandb_run_id if resume else None
        logger: Logger = WandbLogger(
            project=cfg.logger.project,
            name=name,
            save_dir=str(run_dir),
            offline=cfg.logger.offline,
            entity=cfg.logger.get("entity"),
            tags=list(cfg.logger.get("tags") or []),
            id=run_id,
            resume="allow" if run_id else None,
        )
        logger.log_hyperparams(loggable_config(cfg))
        return [logger]
    if kind == "csv":  # Lightning's CSV writer would delete the metrics of the steps before a resume
        return [CSVLogger(save_dir=str(run_dir), name="csv", version=f"resumed_at_step{resume.step}" if resume else "")]
    if kind == "tensorboard":
        return [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")]
    raise ConfigError(f"logger.kind={kind!r} is unknown; choose wandb, csv or tensorboard")


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], max_steps: int, resume: ResumePoint | None = None
) -> L.Trainer:
    return L.Trainer(
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        num_nodes=cfg.hardware.get("num_nodes", 1),
        strategy=instantiate(cfg.hardware.strategy)
        if isinstance(cfg.hardware.strategy, DictConfig)
        else cfg.hardware.strategy,
        precision=cfg.hardware.precision,
        plugins=[AtomicCheckpointIO(), *instantiate(cfg.hardware.get("plugins") or [])],
        use_distributed_sampler=False,  # the datamodule's sampler shards by rank and resumes mid-epoch
        max_steps=max_steps,
        max_epochs=-1,
        default_root_dir=str(run_dir),
        logger=build_loggers(cfg, run_dir, resume),
        callbacks=[*callbacks, StepProgressBar()] if cfg.progress else callbacks,
        log_every_n_steps=cfg.train.log_every_n_steps,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        fast_dev_run=cfg.train.fast_dev_run,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
