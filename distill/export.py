"""``distill-export``: a finished run's student as a diffusers model directory.

    distill-export run_dir=outputs/<run> out=exports/digits-pd nfe=1

Writes ``unet/`` (or ``transformer/``: config and safetensors weights, LoRA merged in), a
``scheduler/`` for diffusers' ``FlowMatchEulerDiscreteScheduler`` (``stochastic_sampling`` on for
consistency-style students that jump to data and re-noise), and ``distill_sampler.json`` with the
exact FM times of the student's ``nfe``-step sampler and its starting noise scale. A LoRA student
also gets ``lora/``: the adapters alone (peft format, ``adapter_model.safetensors`` and
``adapter_config.json``) beside ``lora/base/``, the frozen body they adapt. The sampling loop:

    scheduler.set_timesteps(sigmas=sampler["sigmas"][:-1])
    x = sampler["initial_noise_scale"] * noise
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import hydra
from diffusers import FlowMatchEulerDiscreteScheduler, ModelMixin
from omegaconf import DictConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from distill.build import CONF_DIR
from distill.errors import ConfigError, friendly_errors
from distill.evaluate import load_run_module

SAMPLER_NAME = "distill_sampler.json"
ADAPTER = "default"  # peft's name for the one adapter a LoRA student has
TIME_SCALE = 1000  # the timestep a flow-matching diffusers model takes is 1000 sigma


def diffusers_network(model: nn.Module) -> ModelMixin:
    """The diffusers model inside a flow-matching student (our ``UNet`` wrapper or a diffusers teacher copy)."""
    if getattr(model, "scheme", None) != "fm":
        raise ConfigError(f"only flow-matching students export to a FlowMatch scheduler; this one is "
                          f"{type(model).__name__} with scheme={getattr(model, 'scheme', None)!r}")
    net = getattr(model, "net", None)
    inner = net if isinstance(net, ModelMixin) else getattr(net, "model", None)
    if not isinstance(inner, ModelMixin) or getattr(net, "extra_time", False):
        raise ConfigError(f"the student's network ({type(net).__name__}) is not a plain diffusers model: "
                          "export needs a UNet or diffusers-teacher student")
    return inner


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


def write_lora(network: nn.Module, out: Path) -> None:
    """The adapters in peft's format (module names relative to the diffusers model) and their base."""
    (out / "lora").mkdir(parents=True)
    layer = next(m for m in network.modules() if isinstance(m, LoraLayer))
    # peft's saved format: the adapter name is not part of the key ("x.lora_A.weight")
    adapters = {k.replace(f".{ADAPTER}.", "."): v.contiguous() for k, v in network.state_dict().items() if ".lora_" in k}
    save_file(adapters, out / "lora" / "adapter_model.safetensors")
    targets = sorted(name for name, m in network.named_modules() if isinstance(m, LoraLayer))
    adapter = {"peft_type": "LORA", "r": int(layer.r[ADAPTER]), "lora_alpha": float(layer.lora_alpha[ADAPTER]),
               "target_modules": targets, "bias": "none"}
    (out / "lora" / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    without_lora(network, merge=False).save_pretrained(out / "lora" / "base", safe_serialization=True)


def export_run(run_dir: Path, out: Path, nfe: int, cache: str, overwrite: bool = False) -> Path:
    """Write the export of ``run_dir``'s student at ``nfe`` steps to ``out`` (atomically: a temp dir renamed)."""
    if out.exists() and not overwrite:
        raise ConfigError(f"out={out} exists: choose another directory or pass overwrite=true")
    module = load_run_module(run_dir, cache)
    plan = module.method.sampling_plan(module.sampling_student(), nfe)
    if plan is None:
        raise ConfigError(f"method={module.method.name} at nfe={nfe} samples in a way a diffusers scheduler cannot "
                          "follow (its own arcs, average velocities or curves): sample it with distill-sample")
    network = diffusers_network(plan.network)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    folder = folder_for(network)
    without_lora(network, merge=True).save_pretrained(tmp / folder, safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=TIME_SCALE, shift=1.0,
                                    stochastic_sampling=plan.renoise).save_pretrained(tmp / "scheduler")
    if has_lora(network):
        write_lora(network, tmp)
    if module.teacher.codec is not None:  # a latent student ships with the VAE that decodes its samples
        module.teacher.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    sampler = {"method": module.method.name, "nfe": nfe, "sigmas": plan.sigmas, "renoise": plan.renoise,
               "initial_noise_scale": plan.sigmas[0], "network": folder, "run_dir": str(run_dir),
               "step": int(module.step_count)}
    (tmp / SAMPLER_NAME).write_text(json.dumps(sampler, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = export_run(Path(cfg.run_dir), Path(cfg.out), cfg.nfe, cfg.paths.cache, cfg.overwrite)
    print(f"exported {cfg.run_dir} ({cfg.nfe} NFE) -> {out}")


if __name__ == "__main__":
    main()
