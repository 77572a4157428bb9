from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from distill.data import DataModule, DatasetError
from distill.data.datamodule import reference_seed, train_seed
from distill.data.digits import load_digits_split
from distill.data.toy2d import make_toy2d


def test_2d_module_describes_itself_and_batches() -> None:
    dm = DataModule("moons", batch_size=256, num_train=1000, seed=5)
    assert (dm.kind, dm.data_shape, dm.num_classes) == ("2d", (2,), 0)
    dm.setup("fit")
    assert dm.train_size == 1000
    assert torch.equal(dm.train_tensor(), make_toy2d("moons", 1000, train_seed(5)))
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # drop_last
    x, y = batches[0]
    assert x.shape == (256, 2) and y.shape == (256,) and y.dtype == torch.int64 and not y.any()
    # Shuffled: the first batch is not the first 256 points; every point seen at most once.
    assert not torch.equal(x, dm.train_tensor()[:256])
    assert torch.cat([b[0] for b in batches]).unique(dim=0).shape[0] == 768


def test_shuffle_order_is_seeded() -> None:
    def first(seed: int) -> torch.Tensor:
        return next(iter(DataModule("gmm", 64, num_train=500, seed=seed).train_dataloader()))[0]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))


def test_2d_reference_is_fresh_and_never_the_training_draw() -> None:
    dm = DataModule("gmm", batch_size=32, num_train=2000, seed=0)
    ref = dm.reference_samples(2000, seed=0)
    assert ref.shape == (2000, 2) and torch.equal(ref, make_toy2d("gmm", 2000, reference_seed(0)))
    assert torch.equal(ref, dm.reference_samples(2000, seed=0))
    assert not torch.equal(ref, dm.reference_samples(2000, seed=1))
    train = dm.train_tensor()
    assert not (ref[:500, None, :] == train[None]).all(-1).any()  # no shared points
    assert {train_seed(s) for s in range(50)}.isdisjoint({reference_seed(s) for s in range(50)})
    assert dm.reference_samples().shape == (10_000, 2)


def test_digits_module_trains_on_train_and_references_heldout() -> None:
    dm = DataModule("digits", batch_size=100)
    assert (dm.kind, dm.data_shape, dm.num_classes) == ("image", (1, 8, 8), 10)
    assert dm.train_size == 1257
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 8, 8) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    heldout = load_digits_split("heldout")[0]
    assert torch.equal(dm.reference_samples(), heldout)
    sub = dm.reference_samples(100, seed=3)
    assert sub.shape == (100, 1, 8, 8) and torch.equal(sub, dm.reference_samples(100, seed=3))


def test_image_folder_module(image_dir: Path) -> None:
    dm = DataModule("image_folder", batch_size=2, path=image_dir, resolution=8, channels=3)
    assert (dm.kind, dm.data_shape, dm.num_classes) == ("image", (3, 8, 8), 0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 0]
    assert dm.train_tensor().shape == (4, 3, 8, 8)
    assert dm.reference_samples().shape == (4, 3, 8, 8)
    assert dm.reference_samples(2, seed=0).shape == (2, 3, 8, 8)


def test_cifar10_module_uses_test_split_as_reference(fake_cifar_root: Path) -> None:
    dm = DataModule("cifar10", batch_size=4, root=fake_cifar_root)
    assert (dm.data_shape, dm.num_classes) == ((3, 32, 32), 10)
    assert dm.train_size == 10
    assert dm.reference_samples().shape == (3, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "mnist", "batch_size": 8},
            "dataset.name='mnist' is unknown; choose one of gmm, moons, rings, checkerboard, digits, fashion_mnist, "
            "image_folder, cifar10, array",
        ),
        (
            {"name": "image_folder", "batch_size": 8},
            "needs dataset.path=<folder> and dataset.resolution",
        ),
        ({"name": "cifar10", "batch_size": 8}, "needs dataset.root="),
        ({"name": "gmm", "batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace("[", r"\[")):
        DataModule(**kwargs)


def test_empty_training_set_raises() -> None:
    with pytest.raises(DatasetError, match="training set of dataset 'rings' is empty; set dataset.num_train > 0"):
        DataModule("rings", batch_size=8, num_train=0).setup()


def test_batch_larger_than_dataset_raises() -> None:
    with pytest.raises(DatasetError, match="batch_size=64 exceeds the 10 training examples"):
        DataModule("rings", batch_size=64, num_train=10).train_dataloader()


def test_missing_cifar_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="CIFAR-10 not found"):
        DataModule("cifar10", batch_size=8, root=tmp_path).setup()


def test_loader_survives_lightning_distributed_sampler_swap() -> None:
    # What Lightning does under DDP: rebuild our DataLoader around a DistributedSampler.
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = DataModule("moons", batch_size=50, num_train=400)
    loader = dm.train_dataloader()
    sampler = DistributedSampler(dm.train_dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    rebuilt = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
    batches = list(rebuilt)
    assert len(batches) == 4 and batches[0][0].shape == (50, 2)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)
        self.seen: list[tuple[int, ...]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append(tuple(x.shape))
        return ((self.net(x) - x) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_consumes_the_module(tmp_path: Path) -> None:
    model = _Tiny()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=DataModule("checkerboard", batch_size=16, num_train=100))
    assert model.seen == [(16, 2)] * 3
