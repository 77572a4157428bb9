"""The run's progress bar counts the steps train.max_steps counts, across epochs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.callbacks.progress import StepProgressBar


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TwoOptimizerSteps(Tiny):
    """Counts its own batches, as DistillModule does, and takes two optimizer steps per batch."""

    def __init__(self, max_batches: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.max_batches = max_batches
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        for _ in range(2):
            opt.zero_grad()
            self.manual_backward(self.layer(batch[0]).square().mean())
            opt.step()
        self.step_count += 1
        if int(self.step_count) >= self.max_batches:
            self.trainer.should_stop = True


def fit(module: L.LightningModule, max_steps: int) -> None:
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4)  # 4 batches an epoch
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[StepProgressBar()],
        accelerator="cpu",
    )
    trainer.fit(module, data)


@pytest.mark.parametrize(("module", "max_steps", "expected"), [(Tiny, 10, "10/10"), (TwoOptimizerSteps, 100, "6/6")])
def test_bar_shows_steps_of_the_whole_run_not_epochs(
    capfd: pytest.CaptureFixture, module, max_steps: int, expected: str
) -> None:
    fit(module() if module is Tiny else module(6), max_steps)
    captured = capfd.readouterr()
    output = captured.out + captured.err  # Lightning draws its bars on stdout
    assert "step: 100%" in output and expected in output
    assert "Epoch" not in output
