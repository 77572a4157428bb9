"""FSDP2 on two (and four) CPU ranks (gloo) trains exactly as DDP on as many, for every kind of method.

Each rank builds the module from the same config and seed, sees the same half of every batch and
draws the same noise under both strategies; after 20 batches with gradient clipping active, the
student, its EMA copies and the method's networks (DMD2's fake score and GAN head) must agree to
1e-5, and so must every step's gradient norm: under FSDP each rank holds a shard of the gradients,
and a norm of the shard alone (clipping each rank by its own coefficient) would differ. The
methods cover one optimizer (progressive distillation), two with auxiliary networks (DMD2 + GAN),
a JVP through the sharded student (sCD), LoRA students whose frozen layers are the teacher's
(ArcFlow, pi-Flow), and the newer methods' own pieces: SiDA's elementwise clip and encoder GAN,
f-distill's density-ratio weights, LADD's heads on teacher features, AnyFlow's on-policy rollouts.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

import distill.lit.distill as lit_distill
from distill.build import build_module
from distill.callbacks.rank_seed import RankSeed
from distill.lit.local_ranks import run_local_ranks
from distill.lit.sharding import FullyShardedStrategy, full_tensor, is_sharded
from distill.teachers.checkpoint import load_teacher
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "hardware"
GLOBAL_BATCH, BATCHES, CLIP = 8, 20, 1e-2
CASES = {
    "progressive": ["method=progressive"],
    "dmd2_gan": ["method=dmd2", "method.objective.gan_weight=0.1"],
    "scd": ["method=scd"],
    "arcflow_lora": ["method=arcflow", "method.objective.components=2", "method.objective.intermediate_states=1"],
    # A conv bias before a GroupNorm has a zero gradient in exact arithmetic; Adam at eps 1e-8 turns its
    # rounding noise into full-size steps whose sign differs between any two reduction orders (DDP's
    # and FSDP's too). eps 1e-4 keeps that noise out. R1 is off: FSDP refuses it (test_sharding.py).
    "gdd": ["method=gdd", "method.objective.r1_gamma=0", "+method.optimizer.eps=1e-4"],
    "meanflow": ["method=meanflow"],
    # Both warm-ups end inside the 20 batches: the fake score's elementwise clip, then the generator,
    # then the GAN read from the fake score's own encoder.
    "sida": ["method=sida", "method.objective.generator_start_step=4", "method.objective.gan_start_step=8"],
    "fdistill": ["method=fdistill"],
    "ladd": ["method=ladd", "method.objective.student_update_freq=2", "+method.optimizer.eps=1e-4"],  # as GDD
    "anyflow": ["method=anyflow", "method.objective.stage2_start=10", "method.objective.rollout_nfes=[2,4]"],
    # pi-Flow's rollouts (128 substeps) amplify reduction-order rounding: with Adam at eps 1e-8 and
    # component dropout on, the log-std head's weights drifted 8e-5 apart in 20 steps; with GDD's eps
    # and no dropout they agree to 3e-7, and a few steps' gradient norms to 1e-4 - 1e-3.
    "piflow_lora": [
        "method=piflow",
        "method.objective.components=2",
        "method.objective.intermediate_states=1",
        "+method.optimizer.eps=1e-4",
        "method.objective.component_dropout=0",
    ],
}
# Gradient norms agree to 1e-4 elsewhere: reduction orders differ, and a shard's own norm would be
# off by tens of percent.
NORM_RTOL = {"piflow_lora": 1e-2}


def strategies() -> dict[str, object]:
    ddp = OmegaConf.load(CONF / "ddp_sim.yaml").strategy
    fsdp = instantiate(OmegaConf.load(CONF / "fsdp_sim.yaml").strategy)
    assert isinstance(fsdp, FullyShardedStrategy)
    return {"ddp": ddp, "fsdp": fsdp}


def batches() -> torch.Tensor:
    """(BATCHES, GLOBAL_BATCH, 1, 8, 8) digit-sized images; of W ranks, rank r trains on the r-th W-th of each."""
    x = torch.rand(BATCHES * GLOBAL_BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return x.view(BATCHES, GLOBAL_BATCH, 1, 8, 8)


def train_one(cfg, strategy, rank: int, world: int) -> tuple[dict[str, torch.Tensor], list[float], bool]:
    """The whole state after BATCHES batches (gathered from the shards), every step's gradient norms,
    and whether the networks were sharded."""
    seed_everything(0, verbose=False)
    module = build_module(cfg, load_teacher(cfg.teacher.path))
    norms: list[float] = []
    measure = lit_distill.grad_norm
    lit_distill.grad_norm = lambda params, max_norm: norms.append(float(out := measure(params, max_norm))) or out
    part = GLOBAL_BATCH // world
    mine = batches()[:, rank * part : (rank + 1) * part].reshape(-1, 1, 8, 8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_steps=module.optimizer_steps_bound(module.max_batches),
        use_distributed_sampler=False,  # as build_trainer: the rank's data is its own
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RankSeed(seed=0)],
    )
    try:
        trainer.fit(module, DataLoader(TensorDataset(mine), batch_size=part))
    finally:
        lit_distill.grad_norm = measure
    state = {k: full_tensor(v).detach().clone() for k, v in module.state_dict().items()}  # collective
    return state, norms, is_sharded(module.student)


def _rank(rank: int, world: int, out: Path, configs: dict) -> None:
    for name, cfg in configs.items():
        for kind, strategy in strategies().items():
            state, norms, sharded = train_one(cfg, strategy, rank, world)
            torch.save({"state": state, "norms": norms, "sharded": sharded}, out / f"{name}_{kind}_{rank}.pt")


def labelled(label: str):
    """An ``assert_close`` message: ``label``, then torch's own account of the difference."""
    return lambda message: f"{label}: {message}"


def compare(names: list[str], tmp_path: Path, world: int = 2) -> None:
    configs = {
        name: compose_config(
            "train",
            ["dataset=digits", *CASES[name], f"train.max_steps={BATCHES}", f"method.grad_clip={CLIP}"],
            tmp_path / name,
        )
        for name in names
    }
    run_local_ranks(_rank, world, tmp_path, configs)  # started here: Lightning would re-run pytest
    for name in names:
        ddp, fsdp = (torch.load(tmp_path / f"{name}_{kind}_0.pt", weights_only=True) for kind in ("ddp", "fsdp"))
        other = torch.load(tmp_path / f"{name}_fsdp_{world - 1}.pt", weights_only=True)
        assert fsdp["sharded"] and not ddp["sharded"], name
        assert len(ddp["norms"]) >= BATCHES and min(ddp["norms"]) > CLIP, f"{name}: clipping was not active"
        rtol = NORM_RTOL.get(name, 1e-4)
        torch.testing.assert_close(fsdp["norms"], ddp["norms"], rtol=rtol, atol=0, msg=labelled(f"{name} norms"))
        assert fsdp["state"].keys() == ddp["state"].keys(), name
        for key, value in ddp["state"].items():
            torch.testing.assert_close(fsdp["state"][key], value, rtol=0, atol=1e-5, msg=labelled(f"{name} {key}"))
            assert torch.equal(other["state"][key], fsdp["state"][key]), f"{name}: ranks gathered different {key}"
        kinds = {key.split(".")[0] for key in ddp["state"]}
        assert "student" in kinds and ("ema" in kinds) == bool(configs[name].method.ema_decays), name
        if name == "dmd2_gan":
            assert any(".gan_heads." in key for key in ddp["state"]), "the GAN head is compared too"


@pytest.mark.slow
def test_fsdp_equals_ddp_for_progressive_distillation_and_dmd2_with_its_gan(cache_dir, tmp_path):
    compare(["progressive", "dmd2_gan"], tmp_path)


@pytest.mark.slow
def test_fsdp_equals_ddp_for_scd_and_an_arcflow_lora_student(cache_dir, tmp_path):
    compare(["scd", "arcflow_lora"], tmp_path)


@pytest.mark.slow
def test_fsdp_equals_ddp_for_gdd_with_its_discriminator_and_meanflow(cache_dir, tmp_path):
    compare(["gdd", "meanflow"], tmp_path)


@pytest.mark.slow
def test_fsdp_equals_ddp_for_sida_f_distill_and_ladd(cache_dir, tmp_path):
    compare(["sida", "fdistill", "ladd"], tmp_path)


@pytest.mark.slow
def test_fsdp_equals_ddp_for_anyflow_across_its_stage_switch_and_a_piflow_lora_student(cache_dir, tmp_path):
    compare(["anyflow", "piflow_lora"], tmp_path)


@pytest.mark.slow
def test_fsdp_equals_ddp_on_four_ranks_for_dmd2_with_its_gan(cache_dir, tmp_path):
    compare(["dmd2_gan"], tmp_path, world=4)
