"""``distill-export``: a finished run's student as a diffusers model directory.

    distill-export run_dir=outputs/<run> out=exports/digits-pd nfe=1

Writes ``unet/`` (or ``transformer/``: config and safetensors weights, LoRA merged in), a
``scheduler/`` for diffusers' ``FlowMatchEulerDiscreteScheduler`` (``stochastic_sampling`` on for
consistency-style students that jump to data and re-noise), and ``distill_sampler.json`` with the
exact FM times of the student's ``nfe``-step sampler and its starting noise scale. A LoRA student
of a model class diffusers can load LoRA into (``UNet2DConditionModel``, SD3 / FLUX transformers:
the ``PeftAdapterMixin`` classes) also gets ``lora/pytorch_lora_weights.safetensors``, the adapters
alone in diffusers' naming (``unet.<module>.lora_A.weight``, rank and alpha in the file's
``lora_adapter_metadata``): ``pipe.load_lora_weights(export / "lora")`` on the teacher's pipeline.
If the student also trained weights outside the adapters, the body they adapt is written beside
them as ``lora/base/``. Other classes (``UNet2DModel``) have no LoRA loader: ``unet/`` is their
only, merged form. The sampling loop:

    scheduler.set_timesteps(sigmas=sampler["sigmas"][:-1])
    x = sampler["initial_noise_scale"] * noise
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample

A class-conditional UNet takes ``class_labels`` too (``distill-sample`` asks seed i for class
i mod classes). A student with a guidance-scale input (``student.guidance_range``) exports at one
scale, ``guidance=<w>`` (default: the teacher's ``guidance`` it was trained beside): its w embedding
is a constant added to the time embedding, folded into that embedding's last bias, so the export
is a plain ``UNet2DModel`` that samples at w with one call per step; ``distill_sampler.json`` records w.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hydra
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.loaders.peft import PeftAdapterMixin
from omegaconf import DictConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import Tensor, nn

from distill.build import CONF_DIR
from distill.core.io import replace_directory
from distill.errors import ConfigError, friendly_errors
from distill.runs import SAMPLER_NAME, load_run_module
from distill.students.guidance_input import no_guidance_input

ADAPTER = "default"  # peft's name for the one adapter a LoRA student has
TIME_SCALE = 1000  # the timestep a flow-matching diffusers model takes is 1000 sigma
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name diffusers' LoRA loaders look for
LORA_METADATA_KEY = "lora_adapter_metadata"  # where they read the LoraConfig from

log = logging.getLogger(__name__)


def diffusers_network(model: nn.Module) -> ModelMixin:
    """The diffusers model inside a flow-matching student (our ``UNet`` wrapper or a diffusers teacher copy)."""
    if getattr(model, "scheme", None) != "fm":
        raise ConfigError(
            f"only flow-matching students export to a FlowMatch scheduler; this one is "
            f"{type(model).__name__} with scheme={getattr(model, 'scheme', None)!r}"
        )
    net = getattr(model, "net", None)
    inner = net if isinstance(net, ModelMixin) else getattr(net, "model", None)
    if not isinstance(inner, ModelMixin) or getattr(net, "extra_time", False):
        raise ConfigError(
            f"the student's network ({type(net).__name__}) is not a plain diffusers model: "
            "export needs a UNet or diffusers-teacher student"
        )
    return inner


def with_guidance_folded(network: ModelMixin, wrapper: nn.Module, guidance: float | None) -> ModelMixin:
    """``network`` (the diffusers model inside ``wrapper``) at guidance scale ``guidance``: a copy whose
    time embedding's last bias holds the wrapper's w embedding (exact: the embedding is added to the
    time embedding's output). A student without a guidance input is returned as is (``guidance`` None).

    Raises:
        ConfigError: ``guidance`` given for a student without a guidance input.
    """
    if getattr(wrapper, "guidance_embed", None) is None:
        if guidance is not None:
            raise no_guidance_input(guidance)
        return network
    w = wrapper.default_guidance if guidance is None else float(guidance)
    folded = copy.deepcopy(network)
    with torch.no_grad():
        added = wrapper.guidance_embedding(torch.tensor([w], device=folded.device))[0]
        folded.time_embedding.linear_2.bias.add_(added.to(folded.time_embedding.linear_2.bias.dtype))
    return folded


def export_guidance(wrapper: nn.Module, guidance: float | None) -> float | None:
    """The guidance scale an export samples at (None: the student has no guidance input)."""
    if getattr(wrapper, "guidance_embed", None) is None:
        return None
    return wrapper.default_guidance if guidance is None else float(guidance)


def has_lora(network: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in network.modules())


def without_lora(network: nn.Module, merge: bool) -> nn.Module:
    """A copy with every LoRA layer replaced by its base layer, the adapters merged in (or dropped)."""
    network = copy.deepcopy(network)
    for name, module in list(network.named_modules()):
        if isinstance(module, LoraLayer):
            if merge:
                module.merge()
            parent, _, attr = name.rpartition(".")
            setattr(network.get_submodule(parent) if parent else network, attr, module.get_base_layer())
    return network


def folder_for(network: nn.Module) -> str:
    return "transformer" if "Transformer" in type(network).__name__ else "unet"


def has_lora_loader(network: nn.Module) -> bool:
    """Whether diffusers can load LoRA into this model class (``load_lora_adapter``)."""
    return isinstance(network, PeftAdapterMixin)


def diffusers_lora_state(network: nn.Module, prefix: str) -> dict[str, Tensor]:
    """The adapters under diffusers' keys: ``<prefix>.<module>.lora_A.weight`` (peft's saved naming, the
    adapter name dropped, behind the pipeline component the loader strips: ``unet`` or ``transformer``)."""
    return {
        f"{prefix}.{k.replace(f'.{ADAPTER}.', '.')}": v.detach().contiguous()
        for k, v in network.state_dict().items()
        if ".lora_" in k
    }


def lora_metadata(network: nn.Module, prefix: str) -> dict[str, str]:
    """The safetensors metadata diffusers turns into the ``LoraConfig`` (rank, alpha, targets), so the
    scale alpha / r is the trained one rather than guessed from the weights' shapes."""
    layers = {name: m for name, m in network.named_modules() if isinstance(m, LoraLayer)}
    first = next(iter(layers.values()))
    config = {
        "r": int(first.r[ADAPTER]),
        "lora_alpha": float(first.lora_alpha[ADAPTER]),
        "target_modules": sorted(layers),
        "lora_dropout": 0.0,
        "bias": "none",
    }
    ranks = {name: int(m.r[ADAPTER]) for name, m in layers.items()}
    if len(set(ranks.values())) > 1:
        config["rank_pattern"] = ranks
        config["alpha_pattern"] = {name: float(m.lora_alpha[ADAPTER]) for name, m in layers.items()}
    packed = {f"{prefix}.{key}": value for key, value in config.items()}
    return {"format": "pt", LORA_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(v, state_b[k].to(v)) for k, v in state_a.items())


def write_lora(network: nn.Module, teacher_network: nn.Module | None, out: Path) -> str:
    """``lora/`` in diffusers' format (see the module docstring); returns what was written, for the log."""
    if not has_lora_loader(network):
        return (
            f"{type(network).__name__} has no LoRA loader in diffusers: the LoRA student is exported merged "
            f"only ({folder_for(network)}/)"
        )
    folder = folder_for(network)
    (out / "lora").mkdir(parents=True)
    save_file(
        diffusers_lora_state(network, folder), out / "lora" / LORA_WEIGHTS, metadata=lora_metadata(network, folder)
    )
    body = without_lora(network, merge=False)
    if teacher_network is not None and same_weights(body, teacher_network):
        return f"lora/{LORA_WEIGHTS}: load the teacher's pipeline, then pipe.load_lora_weights(<export>/lora)"
    body.save_pretrained(out / "lora" / "base", safe_serialization=True)  # train_fully weights live here
    return (
        f"lora/{LORA_WEIGHTS} and lora/base/: the student trained weights outside its adapters, so load "
        f"the base from lora/base/, then .load_lora_adapter(<export>/lora, weight_name={LORA_WEIGHTS!r}, "
        f"prefix={folder!r})"
    )


def teacher_network(module: nn.Module) -> nn.Module | None:
    """The teacher's diffusers model, the body a LoRA student adapts (None for our own networks)."""
    net = getattr(module.teacher.model, "net", None)
    return net if isinstance(net, ModelMixin) else None


def export_run(
    run_dir: Path, out: Path, nfe: int, cache: str, overwrite: bool = False, guidance: float | None = None
) -> Path:
    """Write the export of ``run_dir``'s student at ``nfe`` steps to ``out`` (atomically: a temp dir renamed);
    a guidance-input student at scale ``guidance`` (None: its default)."""
    if out.exists() and not overwrite:
        raise ConfigError(f"out={out} exists: choose another directory or pass overwrite=true")
    module = load_run_module(run_dir, cache)
    plan = module.method.sampling_plan(module.sampling_student(), nfe)
    if plan is None:
        raise ConfigError(
            f"method={module.method.name} at nfe={nfe} samples in a way a diffusers scheduler cannot "
            "follow (its own arcs, average velocities or curves): sample it with distill-sample"
        )
    network = diffusers_network(plan.network)
    folder = folder_for(network)
    wrapper = plan.network.net
    with_guidance_folded(network, wrapper, guidance)  # refuses guidance= before anything is written

    def write(tmp: Path) -> None:
        merged = without_lora(network, merge=True)
        with_guidance_folded(merged, wrapper, guidance).save_pretrained(tmp / folder, safe_serialization=True)
        FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=TIME_SCALE, shift=1.0, stochastic_sampling=plan.renoise
        ).save_pretrained(tmp / "scheduler")
        if has_lora(network):
            log.info("LoRA student: %s", write_lora(network, teacher_network(module), tmp))
        if module.teacher.codec is not None:  # a latent student ships with the VAE that decodes its samples
            module.teacher.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        sampler = {
            "method": module.method.name,
            "nfe": nfe,
            "sigmas": plan.sigmas,
            "renoise": plan.renoise,
            "initial_noise_scale": plan.sigmas[0],
            "network": folder,
            "run_dir": str(run_dir),
            "step": int(module.step_count),
            "guidance": export_guidance(wrapper, guidance),
        }
        (tmp / SAMPLER_NAME).write_text(json.dumps(sampler, indent=2))

    return replace_directory(out, write)


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = export_run(Path(cfg.run_dir), Path(cfg.out), cfg.nfe, cfg.paths.cache, cfg.overwrite, cfg.get("guidance"))
    print(f"exported {cfg.run_dir} ({cfg.nfe} NFE) -> {out}")


if __name__ == "__main__":
    main()
