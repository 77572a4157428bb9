"""Run directories: where a run writes, and a finished run's module rebuilt from what it wrote.

Shared by the entry points (``distill-train``, ``distill-eval``, ``distill-sample``,
``distill-export``, ``distill-export-teacher``), so none of them imports another.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from distill.build import build_datamodule, build_module, build_teacher
from distill.errors import ConfigError
from distill.lit.checkpoint_io import read_checkpoint
from distill.lit.distill import DistillModule

SAMPLER_NAME = "distill_sampler.json"
"""The sampling recipe in an export directory: ``distill-export`` writes it, ``distill-sample`` reads it."""


def run_dir_of(cfg: DictConfig) -> Path:
    """``paths.output_dir`` if set, else the directory Hydra made for this run."""
    return Path(cfg.paths.output_dir) if cfg.paths.get("output_dir") else Path(HydraConfig.get().runtime.output_dir)


def load_run_module(run_dir: Path, cache: str) -> DistillModule:
    """Rebuild a finished run's module from its saved config and load its last checkpoint."""
    cfg_path, ckpt = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not cfg_path.is_file() or not ckpt.exists():  # a file, or an FSDP run's folder of shards
        raise ConfigError(
            f"run_dir={run_dir} needs .hydra/config.yaml and checkpoints/last.ckpt (a distill-train run dir)"
        )
    cfg = OmegaConf.load(cfg_path)
    cfg.paths.cache = cache
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_teacher(cfg, dm), init=False)  # the checkpoint replaces init_from weights
    module.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    return module
