"""A DistillModule on tiny networks and a short fit, for the Lightning-layer tests."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.core.gmm import ring_mixture
from distill.lit.distill import DistillModule
from distill.methods.progressive import ProgressiveDistillation
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher


def make_module(steps_per_round: int = 2) -> DistillModule:
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=32, depth=1)), (2,))
    method = ProgressiveDistillation(start_steps=4, final_steps=1, steps_per_round=steps_per_round)
    return DistillModule(
        teacher, student_from_teacher(teacher.model), method, lambda p: torch.optim.Adam(p, lr=1e-2), ema_decays=[0.9]
    )


def ring_batches() -> DataLoader:
    """512 points of the ring mixture in shuffled batches of 64."""
    data = ring_mixture().sample(512, torch.Generator().manual_seed(0)).float()
    return DataLoader(TensorDataset(data), batch_size=64, shuffle=True)


def fit(module: DistillModule, steps: int, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(module, ring_batches())
    return trainer
