"""``distill-sample``: images for given seeds and NFE, from a run or from an export.

    distill-sample run_dir=outputs/<run> nfe=2 seeds=[0,1,2,3] out=samples/
    distill-sample export_dir=exports/digits-pd num_samples=64 format=folder out=samples/

A run samples with its method's own sampler (every method, every NFE); an export runs diffusers'
own classes only (the model class in its config and ``FlowMatchEulerDiscreteScheduler``), as a
user without this project would. Sample i's noise depends on its seed only, so the same seed
gives the same image from the run and from its export. Writes ``grid.png`` (``format=grid``) or
one PNG per seed (``format=folder``), images scaled from [-1, 1].
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import diffusers
import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor
from torchvision.utils import save_image

from distill.build import CONF_DIR
from distill.errors import ConfigError, friendly_errors
from distill.evaluation.noise import seed_generators, seeded_noise
from distill.evaluation.plots import save_samples_png
from distill.runs import SAMPLER_NAME, load_run_module

FORMATS = ("grid", "folder")


@torch.no_grad()
def sample_run(run_dir: Path, nfe: int, seeds: Sequence[int], cache: str) -> Tensor:
    module = load_run_module(run_dir, cache)
    shape, codec = module.teacher.data_shape, module.teacher.codec
    noise = seeded_noise(seeds, shape)
    x = module.method.sample(module.sampling_student(), noise, nfe, lambda i: seeded_noise(seeds, shape, stream=i + 1))
    return codec.decode(x) if codec is not None else x  # a latent teacher's samples, as pixels


def needs_prompts(net: torch.nn.Module) -> bool:
    """Whether a diffusers model cannot run without prompt embeddings (``encoder_hidden_states``)."""
    parameter = inspect.signature(net.forward).parameters.get("encoder_hidden_states")
    return parameter is not None and parameter.default is inspect.Parameter.empty


@torch.no_grad()
def sample_export(export_dir: Path, seeds: Sequence[int]) -> Tensor:
    """The export's sampler with diffusers' classes: the reference loop in ``distill.export``."""
    sampler_path = export_dir / SAMPLER_NAME
    if not sampler_path.is_file():
        raise ConfigError(f"export_dir={export_dir} has no {SAMPLER_NAME}: make it with distill-export")
    sampler = json.loads(sampler_path.read_text())
    model_dir = export_dir / sampler["network"]
    cls = getattr(diffusers, json.loads((model_dir / "config.json").read_text())["_class_name"])
    net = cls.from_pretrained(model_dir, use_safetensors=True).eval()
    if needs_prompts(net):
        raise ConfigError(
            f"{cls.__name__} in {model_dir} is text-conditional and the export holds no prompts: sample it "
            "with distill-sample run_dir=<its run> (the run's prompts), or with the teacher's diffusers "
            "pipeline and the export's weights (pipe.load_lora_weights(<export>/lora) for a LoRA student)"
        )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(export_dir / "scheduler")
    scheduler.set_timesteps(sigmas=sampler["sigmas"][:-1])
    shape = (net.config.in_channels, *(2 * [net.config.sample_size]))
    x = sampler["initial_noise_scale"] * seeded_noise(seeds, shape)
    for i, t in enumerate(scheduler.timesteps):
        # consistency-style exports re-noise: one generator per seed, the streams a run draws from
        generator = seed_generators(seeds, stream=i + 1) if sampler["renoise"] else None
        x = scheduler.step(net(x, t.expand(x.shape[0])).sample, t, x, generator=generator).prev_sample
    if (export_dir / "vae").is_dir():  # a latent student: decode with the exported VAE, scaled as encoded
        vae = diffusers.AutoencoderKL.from_pretrained(export_dir / "vae", use_safetensors=True).eval()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = vae.decode(x / vae.config.scaling_factor + shift).sample.clamp(-1, 1)
    return x


def write_samples(samples: Tensor, seeds: Sequence[int], out: Path, fmt: str, title: str) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; choose one of {FORMATS}")
    if fmt == "grid":
        return save_samples_png(samples, out / "grid.png", title=title, max_images=len(seeds))
    out.mkdir(parents=True, exist_ok=True)
    for seed, image in zip(seeds, samples, strict=True):
        save_image(image.float().clamp(-1, 1) * 0.5 + 0.5, out / f"seed{seed:06d}.png")
    return out


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    seeds = list(cfg.seeds) if cfg.seeds is not None else list(range(cfg.num_samples))
    if bool(cfg.run_dir) == bool(cfg.export_dir):
        raise ConfigError("name exactly one source: run_dir=<distill-train run> or export_dir=<distill-export dir>")
    if cfg.run_dir:
        samples, title = sample_run(Path(cfg.run_dir), cfg.nfe, seeds, cfg.paths.cache), f"{cfg.nfe} NFE"
    else:
        samples, title = sample_export(Path(cfg.export_dir), seeds), "export"
    print(f"wrote {write_samples(samples, seeds, Path(cfg.out), cfg.format, title)}")


if __name__ == "__main__":
    main()
