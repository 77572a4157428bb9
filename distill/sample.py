"""``distill-sample``: images for given seeds and NFE, from a run or from an export.

    distill-sample run_dir=outputs/<run> nfe=2 seeds=[0,1,2,3] out=samples/
    distill-sample export_dir=exports/digits-pd num_samples=64 format=folder out=samples/

A run samples with its method's own sampler (every method, every NFE); an export runs diffusers'
own classes only (the model class in its config and ``FlowMatchEulerDiscreteScheduler``), as a
user without this project would. Sample i's noise depends on its seed only, so the same seed
gives the same image from the run and from its export. Writes ``grid.png`` (``format=grid``) or
one PNG per seed (``format=folder``), images scaled from [-1, 1]. A class-conditional student asks
seed i for class i mod classes (as evaluation does). ``guidance=<w>`` samples a run whose student
takes the guidance scale as an input (``student.guidance_range``) at w; an export samples at the w
it was exported with (``distill-export guidance=``).
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
from distill.core.conditioning import GUIDANCE, LABELS, Condition, conditioned
from distill.errors import ConfigError, friendly_errors
from distill.evaluation.noise import seed_generators, seeded_noise
from distill.evaluation.plots import save_samples_png
from distill.evaluation.runner import seed_labels
from distill.runs import SAMPLER_NAME, load_run_module
from distill.students.guidance_input import no_guidance_input, takes_guidance

FORMATS = ("grid", "folder")


@torch.no_grad()
def sample_run(run_dir: Path, nfe: int, seeds: Sequence[int], cache: str, guidance: float | None = None) -> Tensor:
    module = load_run_module(run_dir, cache)
    shape, codec = module.teacher.data_shape, module.teacher.codec
    noise = seeded_noise(seeds, shape)
    student = module.sampling_student()
    with conditioned(run_condition(student, module.teacher.num_classes, seeds, guidance)):
        x = module.method.sample(student, noise, nfe, lambda i: seeded_noise(seeds, shape, stream=i + 1))
    return codec.decode(x) if codec is not None else x  # a latent teacher's samples, as pixels


def run_condition(
    student: torch.nn.Module, num_classes: int, seeds: Sequence[int], guidance: float | None
) -> Condition | None:
    """What a run's samples are conditioned on: seed i's class (class-conditional), and ``guidance``.

    Raises:
        ConfigError: ``guidance`` given for a student without a guidance input.
    """
    if guidance is not None and not takes_guidance(student):
        raise no_guidance_input(guidance)
    labels = seed_labels(seeds, num_classes)
    condition = {} if labels is None else {LABELS: labels}
    if guidance is not None:
        condition[GUIDANCE] = torch.full((len(seeds),), float(guidance))
    return condition or None


def needs_prompts(net: torch.nn.Module) -> bool:
    """Whether a diffusers model cannot run without prompt embeddings (``encoder_hidden_states``)."""
    parameter = inspect.signature(net.forward).parameters.get("encoder_hidden_states")
    return parameter is not None and parameter.default is inspect.Parameter.empty


@torch.no_grad()
def sample_export(export_dir: Path, seeds: Sequence[int], guidance: float | None = None) -> Tensor:
    """The export's sampler with diffusers' classes: the reference loop in ``distill.export``.

    Raises:
        ConfigError: ``guidance`` differs from the scale the export was made at.
    """
    sampler_path = export_dir / SAMPLER_NAME
    if not sampler_path.is_file():
        raise ConfigError(f"export_dir={export_dir} has no {SAMPLER_NAME}: make it with distill-export")
    sampler = json.loads(sampler_path.read_text())
    exported = sampler.get("guidance")
    if guidance is not None and (exported is None or abs(float(guidance) - exported) > 1e-9):
        raise ConfigError(
            f"guidance={guidance}: export_dir={export_dir} samples at "
            + (f"guidance {exported}, folded into its weights" if exported is not None else "one fixed guidance")
            + "; export the run again with distill-export guidance=<w>, or sample the run (run_dir=) at any w"
        )
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
    classes = (getattr(net.config, "num_class_embeds", None) or 1) - 1  # less the null class
    labels = {"class_labels": seed_labels(seeds, classes)} if classes > 0 else {}
    for i, t in enumerate(scheduler.timesteps):
        # consistency-style exports re-noise: one generator per seed, the streams a run draws from
        generator = seed_generators(seeds, stream=i + 1) if sampler["renoise"] else None
        x = scheduler.step(net(x, t.expand(x.shape[0]), **labels).sample, t, x, generator=generator).prev_sample
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
    guidance = cfg.get("guidance")
    if cfg.run_dir:
        samples = sample_run(Path(cfg.run_dir), cfg.nfe, seeds, cfg.paths.cache, guidance)
        title = f"{cfg.nfe} NFE" + (f", w={guidance}" if guidance is not None else "")
    else:
        samples, title = sample_export(Path(cfg.export_dir), seeds, guidance), "export"
    print(f"wrote {write_samples(samples, seeds, Path(cfg.out), cfg.format, title)}")


if __name__ == "__main__":
    main()
