"""Shared fixtures: a private cache with tiny pretrained teachers, and in-process config composition."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from distill.data import DataModule
from distill.metrics.digits_classifier import DigitsClassifier, load_or_train_digits_classifier
from distill.nets.factory import build_net
from distill.nets.velocity import VelocityModel
from distill.teachers import save_teacher
from distill.teachers.pretraining import denoising_loss

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY_UNET = {
    "type": "unet",
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "attention": False,
    "norm_num_groups": 4,
}
TINY_MLP = {"type": "mlp", "width": 64, "depth": 2}
# A whole distill-train run in seconds: one batch, 16 samples scored, no teacher rows.
QUICK_RUN = [
    "logger=csv",
    "progress=false",
    "debug=fast",
    "eval.num_samples=16",
    "eval.batch_size=16",
    "eval.teacher=false",
]
QUICK_RUN_ONE_NFE = [*QUICK_RUN, "eval.student_nfes=[1]"]  # for runs whose test reads the 1-NFE row alone


def train_tiny_teacher(directory: Path, x: torch.Tensor, net_spec: dict, steps: int, scheme: str = "fm") -> Path:
    """A quick teacher on ``x``: good enough to exercise every code path, not to score well."""
    torch.manual_seed(0)
    model = VelocityModel(build_net(net_spec, tuple(x.shape[1:])), scheme)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (64,))]
        loss = denoising_loss(model, batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_teacher(directory, model.eval(), net_spec, tuple(x.shape[1:]), {"dataset": "test"})


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits classifier per test session (trained once, ~3 s), cached in a temporary folder."""
    cache = tmp_path_factory.mktemp("digits_cache")
    load_or_train_digits_classifier(cache, progress=False)
    return cache


@pytest.fixture(scope="session")
def digits_classifier(classifier_cache: Path) -> DigitsClassifier:
    return load_or_train_digits_classifier(classifier_cache, progress=False)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A private DISTILL_CACHE holding tiny teachers for every built-in dataset."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["DISTILL_CACHE"] = str(cache)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    for name in ("digits", "moons", "rings", "checkerboard", "gmm"):
        dm = DataModule(name=name, batch_size=64, num_train=2000)
        dm.setup()
        spec = TINY_UNET if name == "digits" else TINY_MLP
        train_tiny_teacher(cache / "teachers" / name, dm.train_tensor(), spec, steps=150)
    return cache


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose like the CLI would, with ``${hydra:...}`` usable (outside an app it resolves
    only after ``HydraConfig().set_config``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def compose_train(cache_dir, tmp_path):
    def _compose(*overrides: str) -> DictConfig:
        return compose_config("train", ["logger=csv", "progress=false", *overrides], tmp_path / "run")

    return _compose


CIFAR_TRAIN_PER_BATCH = 2
CIFAR_TEST_SIZE = 3


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A batch pickle as in cifar-10-python.tar.gz: {'data': uint8 (n, 3072), 'labels': [...]}."""
    with open(path, "wb") as f:
        pickle.dump(
            {"batch_label": path.name, "data": data, "labels": labels, "filenames": []},
            f,
            protocol=2,
        )


@pytest.fixture
def fake_cifar_root(tmp_path: Path) -> Path:
    """``<root>/cifar-10-batches-py`` with 5 x 2 training images and 3 test images."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(CIFAR_TRAIN_PER_BATCH, 3072), dtype=np.uint8)
        write_cifar_batch(folder / f"data_batch_{b}", data, [b, (b + 5) % 10])
    test = rng.integers(0, 256, size=(CIFAR_TEST_SIZE, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, [0, 1, 2])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return tmp_path / "cifar"
