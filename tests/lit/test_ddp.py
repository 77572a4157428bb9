"""DDP on two CPU processes (gloo), through Lightning's strategy as ``hardware=ddp_sim`` runs it.

sCM and MeanFlow take a JVP through the student, DMD2 steps two optimizers per batch: for each,
two ranks that see different data end every step with identical weights (gradients synchronised),
draw different noise (seeds per rank), and make the same update as one process that takes the
whole global batch with the same samples and the same noise.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from distill.callbacks.rank_seed import RankSeed
from distill.core.gmm import ring_mixture
from distill.lit.distill import DistillModule
from distill.lit.local_ranks import run_local_ranks
from distill.methods import DMD2
from distill.methods.meanflow import MeanFlow
from distill.methods.scm import SCM
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher

DDP_SIM = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "hardware" / "ddp_sim.yaml")
WORLD, GLOBAL_BATCH, STEPS = DDP_SIM.devices, 8, 2
METHODS = {
    "scm": lambda: SCM(tangent_warmup=1, jvp="exact"),
    "meanflow": lambda: MeanFlow(jvp="exact"),
    "dmd2": lambda: DMD2(generator_times=[1.0], fake_updates_per_generator=1),  # both optimizers every step
}


def make_module(name: str) -> DistillModule:
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    method = METHODS[name]()
    student = method.prepare_student(student_from_teacher(teacher.model))
    with torch.no_grad():  # off the teacher, so every term has a gradient
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module = DistillModule(teacher, student, method, lambda p: torch.optim.Adam(p, lr=1e-2), ema_decays=[0.9])
    module.max_batches = STEPS
    return module


def global_batches() -> torch.Tensor:
    """(STEPS, GLOBAL_BATCH, 2): rank r trains on rows [4r, 4r + 4) of every step's batch."""
    return (
        ring_mixture()
        .sample(STEPS * GLOBAL_BATCH, torch.Generator().manual_seed(3))
        .float()
        .view(STEPS, GLOBAL_BATCH, 2)
    )


class RecordRNG(L.Callback):
    """Each step's starting torch RNG state: what the single-process reference replays per rank."""

    def __init__(self):
        self.states: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.states.append(torch.get_rng_state())


def fit(module: DistillModule, x: torch.Tensor, batch: int, devices: int, callbacks: list[L.Callback]) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDP_SIM.strategy if devices > 1 else "auto",
        max_steps=module.optimizer_steps_bound(STEPS),
        use_distributed_sampler=False,  # as build_trainer
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=batch))


def _rank(rank: int, world: int, out: Path, names: list[str]) -> None:
    half = GLOBAL_BATCH // WORLD
    mine = global_batches()[:, rank * half : (rank + 1) * half].reshape(-1, 2)
    for name in names:
        module, record = make_module(name), RecordRNG()
        fit(module, mine, half, WORLD, [RankSeed(seed=0), record])
        torch.save({"rng": record.states, "state": module.state_dict()}, out / f"{name}_{rank}.pt")


def replay_ranks(module: DistillModule, rank_states: list[list[torch.Tensor]]) -> None:
    """Make one process's loss the mean of each rank's loss on its half, each drawn from that
    rank's RNG stream: the objective DDP's averaged gradient descends."""
    inner, streams = module.method.loss, {}

    def loss(phase, x0, teacher, student, step):
        if step not in streams:
            streams[step] = [states[step] for states in rank_states]
        terms = []
        for rank, part in enumerate(x0.chunk(WORLD)):
            torch.set_rng_state(streams[step][rank])
            terms.append(inner(phase, part, teacher, student, step))
            streams[step][rank] = torch.get_rng_state()
        return {k: sum(t[k] for t in terms) / WORLD for k in terms[0]}

    module.method.loss = loss


def run_two_ranks_and_compare(names: list[str], tmp_path: Path) -> None:
    run_local_ranks(_rank, WORLD, tmp_path, names)  # started here: Lightning would re-run pytest
    for name in names:
        ranks = [torch.load(tmp_path / f"{name}_{r}.pt", weights_only=True) for r in range(WORLD)]
        assert not torch.equal(ranks[0]["rng"][0], ranks[1]["rng"][0]), f"{name}: ranks draw the same noise"
        for key, value in ranks[0]["state"].items():  # different data, one set of weights: gradients synced
            torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0, msg=f"{name}: {key}")

        single = make_module(name)
        replay_ranks(single, [r["rng"] for r in ranks])
        fit(single, global_batches().reshape(-1, 2), GLOBAL_BATCH, 1, [])
        moved = False
        for key, value in single.state_dict().items():
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
            moved |= key.startswith("student.") and not torch.equal(value, make_module(name).state_dict()[key])
        assert moved, f"{name}: the student did not train"


def test_scm_meanflow_dmd2_gradients_sync_and_two_ranks_match_one_process(tmp_path):
    run_two_ranks_and_compare(list(METHODS), tmp_path)
