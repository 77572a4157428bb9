"""Tiny distill-train runs made in-process, for tests that start from a finished run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from distill.train import train
from tests.conftest import compose_config

TINY_RUN = [
    "logger=csv",
    "progress=false",
    "train.max_steps=2",
    "eval=fast",
    "eval.teacher=false",
    "eval.student_nfes=[1]",
]


def run(directory: Path, *overrides: str) -> Path:
    """A finished two-step run in ``directory``, with its config saved as Hydra would."""
    cfg = compose_config("train", [*TINY_RUN, *overrides], directory)
    (directory / ".hydra").mkdir(parents=True)
    OmegaConf.save({k: cfg[k] for k in cfg if k != "hydra"}, directory / ".hydra" / "config.yaml", resolve=True)
    train(cfg)
    return directory
