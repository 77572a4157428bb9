"""distill-pretrain's network comes from conf/net/<dataset>.yaml, and net= picks another."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from distill.errors import ConfigError
from distill.pretrain import pretrain_net_spec
from tests.conftest import CONF_DIR

DATASETS = sorted(p.stem for p in (Path(CONF_DIR) / "dataset").glob("*.yaml"))


def compose_pretrain(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("pretrain", list(overrides))


@pytest.mark.parametrize("dataset", [d for d in DATASETS if d != "prompts"])
def test_each_dataset_pretrains_the_network_of_its_net_config(dataset):
    cfg = compose_pretrain(f"dataset={dataset}")
    spec = pretrain_net_spec(cfg)
    assert spec["type"] in ("mlp", "unet") and spec == OmegaConf.to_container(cfg.net)
    own = OmegaConf.load(Path(CONF_DIR) / "net" / f"{dataset}.yaml")
    assert all(spec[k] == v for k, v in own.items() if k != "defaults")


def test_net_override_picks_another_network():
    assert pretrain_net_spec(compose_pretrain("dataset=digits", "net=mlp"))["type"] == "mlp"
    assert pretrain_net_spec(compose_pretrain("dataset=moons", "net=unet"))["type"] == "unet"


def test_a_dataset_without_a_network_names_the_fix():
    with pytest.raises(ConfigError, match="dataset=prompts has no teacher network: pass net=mlp or net=unet"):
        pretrain_net_spec(compose_pretrain("dataset=prompts"))
