"""The training loader resumes mid-epoch: the batches an uninterrupted run would see, none twice."""

from __future__ import annotations

import itertools

import lightning as L
import torch
from torch import nn

from distill.data import DataModule
from distill.data.resumable import ResumableSampler


def stream(loader, first_epoch: int = 0):
    """Batches epoch after epoch, with ``set_epoch`` at each start as Lightning calls it."""
    for e in itertools.count(first_epoch):
        loader.sampler.set_epoch(e)
        yield from (x for x, _ in loader)


def test_a_resumed_loader_continues_where_the_checkpoint_left_it():
    dm = DataModule("gmm", batch_size=16, num_train=100, seed=1)  # 6 batches an epoch
    full = list(itertools.islice(stream(dm.train_dataloader()), 12))
    for consumed in (0, 3, 6, 8):  # start, mid-epoch, after the epoch's last batch, mid next epoch
        loader = dm.train_dataloader()
        seen = list(itertools.islice(stream(loader), consumed))
        resumed = dm.train_dataloader()
        resumed.load_state_dict(loader.state_dict())
        rest = list(itertools.islice(stream(resumed, resumed.sampler.epoch), 12 - consumed))
        assert all(torch.equal(a, b) for a, b in zip(seen + rest, full, strict=True))


def test_ranks_read_disjoint_equal_shares():
    shares = [list(ResumableSampler(50, 8, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 25 and not set(shares[0]) & set(shares[1])


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.seen = nn.Linear(2, 2), []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch[0].clone())
        return self.net(batch[0]).sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_runs_keep_the_batches_they_drew_before_resuming_existed(tmp_path):
    # torch's seeded RandomSampler under Lightning, per epoch: one int64 draw, then randperm(n).
    dm, model = DataModule("checkerboard", batch_size=16, num_train=100, seed=3), _Recorder()
    L.Trainer(
        max_steps=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(model, datamodule=dm)
    generator, x, legacy = torch.Generator().manual_seed(3), dm.train_tensor(), []
    for _ in range(4):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(100, generator=generator)
        legacy += [x[order[i * 16 : (i + 1) * 16]] for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(model.seen, legacy[:20], strict=True))
