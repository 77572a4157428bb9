"""``distill-pretrain``: train a teacher on any dataset and save it where ``teacher=...`` loads it.

distill-pretrain dataset=digits            # -> ~/.cache/distill/teachers/digits
distill-pretrain dataset=moons net=mlp scheme=edm out=/tmp/moons_teacher
distill-pretrain seed=1 train.max_steps=500 init_from=~/.cache/distill/teachers/digits out=/tmp/sibling
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import seed_everything
from omegaconf import DictConfig

from distill.build import CONF_DIR, as_dict, build_datamodule
from distill.callbacks.progress import StepProgressBar
from distill.core.conditioning import conditioned
from distill.core.grids import make_grid
from distill.core.samplers import prior_state, sample_heun
from distill.errors import ConfigError, friendly_errors
from distill.evaluation.plots import save_samples_png
from distill.lit.pretrain import PretrainModule
from distill.nets.factory import build_net
from distill.nets.velocity import VelocityModel
from distill.teachers.checkpoint import CONFIG_NAME, load_teacher, save_teacher


def pretrain_net_spec(cfg: DictConfig) -> dict:
    """The teacher's architecture: ``net`` (conf/net/<dataset>.yaml unless ``net=`` picks another)."""
    if cfg.get("net"):
        return as_dict(cfg.net)
    raise ConfigError(
        f"dataset={cfg.dataset.name} has no teacher network: pass net=mlp or net=unet, "
        f"or add conf/net/{cfg.dataset.name}.yaml"
    )


def pretrain(cfg: DictConfig) -> Path:
    """Train (or reuse) the teacher at ``cfg.out``; returns its directory."""
    out = Path(cfg.out)
    if (out / CONFIG_NAME).is_file() and not cfg.overwrite:
        print(f"teacher already at {out} (pass overwrite=true to retrain)")
        return out
    seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    net_spec = pretrain_net_spec(cfg)
    if cfg.get("conditional"):
        if dm.num_classes < 2:
            raise ConfigError(f"conditional=true needs class labels; dataset={dm.name} has none")
        net_spec["num_classes"] = dm.num_classes
    start = starting_teacher(cfg, net_spec, dm.data_shape) if cfg.get("init_from") else None
    if start is None:
        model = VelocityModel(build_net(net_spec, dm.data_shape), cfg.scheme, cfg.sigma_data)
    else:  # its own net and weights, trainable again (a loaded teacher is frozen)
        net_spec, model = dict(start.meta["net"]), start.model.train().requires_grad_(True)
    module = PretrainModule(
        model, lr=cfg.train.lr, ema_decay=cfg.train.ema_decay, label_dropout=cfg.train.get("label_dropout", 0.1)
    )
    trainer = L.Trainer(
        accelerator=cfg.hardware.accelerator,
        devices=1,
        precision=cfg.hardware.precision,
        max_steps=cfg.train.max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[StepProgressBar()] if cfg.progress else [],
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        default_root_dir=str(out),
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=dm)
    teacher = module.teacher_model().cpu()
    meta = {
        "dataset": dm.name,
        "train_steps": cfg.train.max_steps,
        "batch_size": cfg.train.batch_size,
        "seed": cfg.seed,
        **({"init_from": str(cfg.init_from)} if cfg.get("init_from") else {}),
    }
    save_teacher(out, teacher, net_spec, dm.data_shape, meta)
    labels = torch.arange(64) % net_spec["num_classes"] if net_spec.get("num_classes") else None
    with torch.no_grad(), conditioned(labels):  # a picture of what was saved, next to it (rows of classes)
        grid = make_grid("cosine", 32)
        x = sample_heun(teacher, prior_state(torch.randn(64, *dm.data_shape), grid[0]), grid)
    save_samples_png(x, out / "samples.png", "teacher, Heun 63 NFE")
    print(f"teacher saved to {out}")
    return out


def net_overridden() -> bool:
    """Whether ``net=`` picked another network than the dataset's own (conf/net/<dataset>.yaml)."""
    if not HydraConfig.initialized():
        return False
    choices = HydraConfig.get().runtime.choices
    return choices.get("net") not in (None, choices.get("dataset"))


def starting_teacher(cfg: DictConfig, net_spec: dict, data_shape: tuple[int, ...]):
    """The teacher at ``cfg.init_from``, checked against this run: training continues from it (a
    fine-tuned sibling keeps its noise-to-data map), with its own net and a fresh optimizer."""
    start = load_teacher(Path(cfg.init_from).expanduser())
    spec = dict(start.meta["net"])
    if net_overridden() and net_spec != spec:
        raise ConfigError(
            f"init_from={cfg.init_from} holds net {spec}, but net= asks for {net_spec}: "
            "drop the net override (the starting teacher's net is used)"
        )
    if bool(spec.get("num_classes")) != bool(cfg.get("conditional")):
        raise ConfigError(
            f"init_from={cfg.init_from} is {'' if spec.get('num_classes') else 'un'}conditional: "
            f"set conditional={str(bool(spec.get('num_classes'))).lower()}"
        )
    theirs = (tuple(start.data_shape), start.meta["scheme"], float(start.meta["sigma_data"]))
    if theirs != (tuple(data_shape), cfg.scheme, float(cfg.sigma_data)):
        raise ConfigError(
            f"init_from={cfg.init_from} is a {theirs[1]} teacher (sigma_data {theirs[2]}) of shape "
            f"{theirs[0]}; this run trains a {cfg.scheme} teacher (sigma_data {cfg.sigma_data}) of "
            f"shape {tuple(data_shape)}: match dataset=, scheme= and sigma_data= to it"
        )
    return start


@hydra.main(config_path=CONF_DIR, config_name="pretrain", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
