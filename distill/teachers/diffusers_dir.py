"""Teachers from a local diffusers directory: ``from_pretrained`` on disk, nothing downloaded.

k-diffusion's ``external.py`` idea: whatever the model predicts (epsilon, v, x0 on a DDPM schedule,
or a flow-matching velocity), one wrapper turns it into the framework's velocity contract
``model(x_s, s) -> eps - x0``. The parameterization comes from the scheduler config saved beside
the model, so a teacher directory needs no extra description.

Accepted layouts: a pipeline directory (``model_index.json``, the network in ``unet/`` or
``transformer/``, ``scheduler/scheduler_config.json``; ``vae/`` makes it a latent teacher, and
``text_encoder/`` + ``tokenizer/`` serve a text-conditional one), or a bare model directory
(``config.json`` and weights) with a ``scheduler_config.json`` beside or in a ``scheduler/`` subfolder.
The text-to-image transformers (SD3, FLUX.1, Qwen-Image) have their own adapter and prompt
encoder (``transformers.py``, ``pipeline_prompts.py``) and need their full pipeline directory.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor, nn

from distill.core.adapt import to_velocity_model
from distill.core.conditioning import (
    LABELS,
    PROMPTS,
    Condition,
    condition_for,
    null_labels,
    num_classes_of,
)
from distill.core.process import FlowMatching, NoiseProcess, VPDiscrete
from distill.teachers.base import Teacher
from distill.teachers.checkpoint import TeacherCheckpointError
from distill.teachers.latent import LatentCodec
from distill.teachers.pipeline_prompts import PipelinePromptEncoder, condition_table
from distill.teachers.prompts import PromptEncoder, prompt_table
from distill.teachers.transformers import (
    TEXT_TRANSFORMERS,
    TextTransformerVelocity,
    embedded_guidance_for,
    is_text_transformer,
    latent_channels,
    needs_text_adapter,
)

NETWORK_FOLDERS = ("unet", "transformer")
# diffusers' prediction_type -> our prediction kind (distill.core.prediction)
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
VP_CONFIG_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
FLOW_TIME_SCALE = 1000.0  # diffusers' flow models take timestep = 1000 sigma


def locate(path: str | Path) -> tuple[Path, Path]:
    """``(model_dir, scheduler_config)`` of a pipeline or bare model directory."""
    path = Path(path)
    hint = (
        "point teacher.path at a diffusers pipeline directory (model_index.json, unet/ or transformer/, "
        "scheduler/) or a model directory (config.json + weights) with its scheduler_config.json"
    )
    if not path.is_dir():
        raise TeacherCheckpointError(f"teacher.path={path} does not exist: {hint}")
    if (path / "model_index.json").is_file():
        folders = [path / f for f in NETWORK_FOLDERS if (path / f / "config.json").is_file()]
        if not folders:
            raise TeacherCheckpointError(f"{path} is a pipeline without a unet/ or transformer/ folder: {hint}")
        model_dir = folders[0]
    elif (path / "config.json").is_file():
        model_dir = path
    else:
        raise TeacherCheckpointError(f"{path} holds neither model_index.json nor config.json: {hint}")
    candidates = [
        model_dir.parent / "scheduler" / "scheduler_config.json",
        model_dir / "scheduler_config.json",
        model_dir / "scheduler" / "scheduler_config.json",
    ]
    scheduler = next((c for c in candidates if c.is_file()), None)
    if scheduler is None:
        raise TeacherCheckpointError(
            f"no scheduler_config.json found for {model_dir} (looked in "
            f"{[str(c) for c in candidates]}): the teacher's parameterization is read from it"
        )
    return model_dir, scheduler


def parameterization(scheduler_config: dict[str, Any]) -> tuple[NoiseProcess, str, float]:
    """``(process, prediction kind, sampling shift)`` from a diffusers scheduler config."""
    name = scheduler_config.get("_class_name", "")
    if name.startswith("FlowMatch"):
        return FlowMatching(), "flow", float(scheduler_config.get("shift", 1.0))
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise TeacherCheckpointError(
            f"scheduler {name} has prediction_type={prediction!r}; supported: "
            f"{sorted(PREDICTION_TYPES)} or a FlowMatch* scheduler"
        )
    if scheduler_config.get("trained_betas") is not None:
        raise TeacherCheckpointError(f"scheduler {name} uses trained_betas, which are not supported yet")
    process = VPDiscrete(**{k: scheduler_config[k] for k in VP_CONFIG_KEYS if k in scheduler_config})
    return process, PREDICTION_TYPES[prediction], 1.0


def load_network(model_dir: Path, dtype: str | None = None) -> nn.Module:
    """The diffusers model class named in ``config.json``, weights from safetensors only, in ``dtype``
    (e.g. ``bfloat16``: a 20B Qwen-Image transformer in float32 alone fills an 80 GB GPU)."""
    config = json.loads((model_dir / "config.json").read_text())
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise TeacherCheckpointError(
            f"{model_dir}/config.json names _class_name={config.get('_class_name')!r}, not a diffusers model class"
        )
    try:
        kwargs = {"torch_dtype": getattr(torch, dtype)} if dtype else {}
        return cls.from_pretrained(model_dir, use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise TeacherCheckpointError(
            f"cannot load {cls.__name__} weights from {model_dir} ({err}): it needs "
            "diffusion_pytorch_model.safetensors (convert .bin weights with diffusers first)"
        ) from err


class DiffusersVelocity(nn.Module):
    """A diffusers network behind ``model(x_s, s) -> v`` in FM coordinates.

    ``net`` is the diffusers model itself, so features, LoRA targets and export read its own
    module names; ``scheme`` is ``fm`` for flow-matching networks (their output is a velocity).
    """

    def __init__(self, net: nn.Module, process: NoiseProcess, prediction: str, null_prompt: Tensor | None = None):
        super().__init__()
        self.net, self.process, self.prediction = net, process, prediction
        self.scheme = "fm" if prediction == "flow" else "diffusers"
        # class embeddings are taken to hold one null class last (DiT-style label dropout)
        self.num_classes = num_classes_of(net)
        self.text = PROMPTS in _required_inputs(net)
        if self.text and null_prompt is None:
            raise TeacherCheckpointError(
                f"{type(net).__name__} is text-conditional: it needs the empty prompt's "
                "embedding (load it from a pipeline dir with text_encoder/ and tokenizer/)"
            )
        # (1, L, D), a buffer so it follows the module's device; never checkpointed
        self.register_buffer("null_prompt", null_prompt, persistent=False)

    @property
    def null_condition(self) -> Condition | None:
        """The empty prompt of a text-conditional net (``Teacher`` adds the null class of labelled ones)."""
        return {PROMPTS: self.null_prompt} if self.text else None

    def native(self, x: Tensor, t: Tensor) -> Tensor:
        timestep = FLOW_TIME_SCALE * t if self.prediction == "flow" else t
        condition = condition_for(x) or {}
        kwargs = {}
        if self.num_classes:  # the batch's labels, else the null (last) class
            kwargs[LABELS] = condition.get(LABELS, null_labels(x, self.num_classes))
        if self.text:  # the batch's prompt embeddings, else the empty prompt's
            kwargs[PROMPTS] = condition.get(PROMPTS, self.null_prompt.expand(x.shape[0], *self.null_prompt.shape[1:]))
        return self.net(x, timestep, **kwargs).sample

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        if self.prediction == "flow":  # already canonical (FM time, velocity eps - x0)
            return self.native(x, s)
        return to_velocity_model(self.native, self.process, self.prediction)(x, s)  # per call: deepcopy-safe


def _required_inputs(net: nn.Module) -> set[str]:
    params = inspect.signature(net.forward).parameters.values()
    return {p.name for p in params if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD}


def load_diffusers_teacher(
    path: str | Path,
    resolution: int | None = None,
    embedded_guidance: float | None = None,
    max_sequence_length: int | None = None,
    dtype: str | None = None,
) -> Teacher:
    """A frozen teacher from a local diffusers directory (see the module docstring for layouts).

    ``resolution`` (pixels), ``embedded_guidance`` and ``max_sequence_length`` serve the text-to-image
    transformers, which work at any resolution (see ``load_text_transformer``); ``dtype`` is the network's.
    """
    model_dir, scheduler_path = locate(path)
    scheduler_config = json.loads(scheduler_path.read_text())
    process, prediction, shift = parameterization(scheduler_config)
    net = load_network(model_dir, dtype)
    if needs_text_adapter(net):
        raise TeacherCheckpointError(
            f"{type(net).__name__} is a text-to-image transformer without an adapter here; "
            f"supported: {sorted(TEXT_TRANSFORMERS)} (add one in distill/teachers/transformers.py)"
        )
    if is_text_transformer(type(net).__name__):
        return load_text_transformer(
            net, model_dir, path, scheduler_config, resolution, embedded_guidance, max_sequence_length
        )
    config = net.config
    channels, size = config.get("in_channels"), config.get("sample_size")
    if channels is None or size is None:
        raise TeacherCheckpointError(
            f"{model_dir}/config.json lacks in_channels / sample_size: the sample shape cannot be read from it"
        )
    side = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    meta = {
        "kind": "diffusers",
        "path": str(path),
        "class": type(net).__name__,
        "prediction": prediction,
        "scheduler": scheduler_config.get("_class_name"),
        "shift": shift,
        "pipeline_dir": str(model_dir.parent),
    }
    null_prompt = None
    if PROMPTS in _required_inputs(net):
        null_prompt = PromptEncoder(model_dir.parent).encode([""])
    teacher = Teacher(DiffusersVelocity(net, process, prediction, null_prompt), (int(channels), *map(int, side)), meta)
    vae_dir = model_dir.parent / "vae"
    if model_dir.parent != model_dir and (vae_dir / "config.json").is_file():  # a latent pipeline
        teacher.codec = LatentCodec(load_network(vae_dir))
    return teacher


def load_text_transformer(
    net: nn.Module,
    model_dir: Path,
    path: str | Path,
    scheduler_config: dict[str, Any],
    resolution: int | None,
    embedded_guidance: float | None,
    max_sequence_length: int | None,
) -> Teacher:
    """An SD3 / FLUX.1 / Qwen-Image teacher: the empty prompt encoded by the pipeline's own text
    encoders, the latent side read from ``resolution`` (these transformers take any size)."""
    pipeline_dir = model_dir.parent
    if model_dir == pipeline_dir or not (pipeline_dir / "model_index.json").is_file():
        raise TeacherCheckpointError(
            f"{type(net).__name__} needs its pipeline directory (model_index.json, "
            "text_encoder*/, tokenizer*/, transformer/): point teacher.path at it"
        )
    codec = (
        LatentCodec(load_network(pipeline_dir / "vae")) if (pipeline_dir / "vae" / "config.json").is_file() else None
    )
    if resolution is None:
        raise TeacherCheckpointError(
            f"{type(net).__name__} has no fixed sample size: pass the resolution (the dataset's, in pixels)"
        )
    factor = codec.factor if codec is not None else 1
    side = resolution // factor
    if side % 2 or side * factor != resolution:
        raise TeacherCheckpointError(
            f"resolution {resolution} is not a multiple of {2 * factor} (VAE factor "
            f"{factor} x 2x2 patches): set dataset.resolution to one"
        )
    encoder = PipelinePromptEncoder(pipeline_dir, type(net).__name__, max_sequence_length)
    try:
        guidance = embedded_guidance_for(net, embedded_guidance)
    except ValueError as err:
        raise TeacherCheckpointError(str(err)) from err
    shape = (latent_channels(net), side, side)
    model = TextTransformerVelocity(net, encoder.encode([""]), guidance, shape)
    meta = {
        "kind": "diffusers",
        "path": str(path),
        "class": type(net).__name__,
        "prediction": "flow",
        "scheduler": scheduler_config.get("_class_name"),
        "shift": float(scheduler_config.get("shift", 1.0)),
        "pipeline_dir": str(pipeline_dir),
        "max_sequence_length": encoder.max_length,
        "embedded_guidance": guidance,
    }
    teacher = Teacher(model, shape, meta)
    teacher.codec = codec
    teacher.prompt_encoder = encoder  # kept for the prompt table (encode_prompt_table releases it): one load
    return teacher


def prompt_encoder_for(meta: dict[str, Any]) -> PromptEncoder | PipelinePromptEncoder:
    """The text encoder(s) of a text-conditional diffusers teacher, from its pipeline directory."""
    if is_text_transformer(meta.get("class", "")):
        return PipelinePromptEncoder(meta["pipeline_dir"], meta["class"], meta.get("max_sequence_length"))
    return PromptEncoder(meta["pipeline_dir"])


def encode_prompt_table(prompts: list[str], teacher: Teacher, cache_dir: str | Path | None) -> Tensor | Condition:
    """Every prompt's conditioning, cached: a tensor of embeddings (CLIP UNets) or a condition table.
    The encoder that made a text transformer's empty prompt is reused, then released."""
    encoder = teacher.__dict__.pop("prompt_encoder", None) or prompt_encoder_for(teacher.meta)
    if isinstance(encoder, PipelinePromptEncoder):
        return condition_table(prompts, encoder, cache_dir)
    return prompt_table(prompts, encoder, cache_dir)
