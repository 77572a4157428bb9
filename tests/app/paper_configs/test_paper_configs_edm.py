"""The paper configs that distil EDM's published checkpoints train: 30 CPU steps (across a stage change
where the method has one) on a tiny EDM-format pickle of the same network (DDPM++ for ``-vp``, NCSN++
for ``-ve``, ADM for ``-adm``, as NVlabs/edm's train.py builds them), class-conditional where the
official file is, at the stand-in data's resolution. ``test_paper_configs.py`` leaves these configs to this file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import DictConfig

from distill.build import build_datamodule
from distill.nets.edm import EDMPrecond
from distill.train import train
from tests.conftest import compose_config
from tests.helpers.paper_configs import (
    PAPER_CONFIGS,
    REPO,
    STAND_IN,
    assert_trained,
    compressed,
    stand_in_data,
)
from tests.teachers.edm_pickles import randomized, write_edm_pickle

EDM_PAPER_RUNS = [  # literal, so test_paper_configs.py sees each config started here
    "experiment=paper_ect_cifar10",
    "experiment=paper_dmd2_imagenet64",
    "experiment=paper_gdd_cifar10",
    "experiment=paper_gdd_afhq64",
    "experiment=paper_gdd_ffhq64",
    "experiment=paper_gdd_imagenet64",
    "experiment=paper_sid_cifar10",
    "experiment=paper_sida_cifar10",
]
# make test-slow only: SiD's 30 steps (25 s on 2 cores: three networks, the generator's gradient through
# two of them) run the code paths paper_sida_cifar10's run through as well, on the same stand-in.
SLOW_RUNS = {"experiment=paper_sid_cifar10"}
OFFICIAL_NAME = re.compile(r"edm-[a-z0-9]+-(\d+)x\1-(cond|uncond)-(vp|ve|adm)\.pkl")
ARCHITECTURES = {  # NVlabs/edm train.py --arch, with EDM's own preconditioning (all edm-*.pkl)
    "vp": dict(
        model_type="SongUNet",
        embedding_type="positional",
        encoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    ),  # DDPM++
    "ve": dict(
        model_type="SongUNet",
        embedding_type="fourier",
        encoder_type="residual",
        channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1],
    ),  # NCSN++
    "adm": dict(model_type="DhariwalUNet"),
}


def stand_in_pickle(file_name: str, resolution: int, num_classes: int, tmp_path: Path) -> Path:
    """A tiny random network of the official file's architecture and conditioning, in EDM's pickle format."""
    match = OFFICIAL_NAME.fullmatch(file_name)
    assert match, f"{file_name} is not one of EDM's published pickle names"
    conditional, arch = match.group(2) == "cond", match.group(3)
    kwargs = dict(
        img_resolution=resolution,
        img_channels=3,
        label_dim=num_classes if conditional else 0,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[resolution // 2],
        dropout=0.1,
        **ARCHITECTURES[arch],
    )
    net = randomized(EDMPrecond(**kwargs))
    return write_edm_pickle(tmp_path / "models" / file_name, net, kwargs, tmp_path / "executed")


def test_every_edm_paper_config_is_started_here():
    edm = [
        f"experiment={name}"
        for name in PAPER_CONFIGS
        if "override /teacher: edm" in (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    ]
    assert sorted(edm) == sorted(EDM_PAPER_RUNS)


@pytest.mark.parametrize(
    "experiment", [pytest.param(run, marks=pytest.mark.slow if run in SLOW_RUNS else ()) for run in EDM_PAPER_RUNS]
)
def test_edm_paper_config_trains_on_a_stand_in_of_its_checkpoint(experiment, cache_dir, tmp_path, request):
    probe: DictConfig = compose_config("train", [experiment], tmp_path / "probe")
    path = Path(probe.teacher.path)
    assert path.parent == Path(probe.paths.models)  # the user downloads the official file there
    data = stand_in_data(probe, tmp_path, request)
    overrides = [experiment, *data, *STAND_IN]
    dm = build_datamodule(compose_config("train", overrides, tmp_path / "probe2"))
    pickle_path = stand_in_pickle(path.name, dm.data_shape[-1], dm.num_classes, tmp_path)
    cfg = compose_config(
        "train",
        [*overrides, f"paths.models={pickle_path.parent}", *compressed(experiment.removeprefix("experiment="))],
        tmp_path / "run",
    )
    train(cfg)
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["model"] for r in rows} == {"teacher", "student"}
    assert all(r["value"] == r["value"] for r in rows)
    assert_trained(tmp_path / "run", experiment.removeprefix("experiment="))
    assert not (tmp_path / "executed").exists()
