"""One LightningDataModule for every dataset the framework trains on, built from plain arguments.

Batches are ``(x, y)``: ``x`` data in the model's space (2-D points, or images in [-1, 1]) and
``y`` int64 class labels (zeros for unconditional sets). ``reference_samples`` gives the
evaluation reference, which never overlaps the training data:

- 2-D toys: fresh draws from the true distribution; training uses seed ``2 s`` and references
  seed ``2 s' + 1``, so the two streams differ for every pair of seeds.
- digits: the fixed held-out split (``distill.data.digits``).
- cifar10: the 10k test split. image_folder: the training images themselves (there is no split).
- fashion_mnist: the split ``reference_split`` names, ``test`` (reported numbers) or ``validation``
  (choosing defaults); training images 55,000-59,999 are the validation split and never train.
- array: its validation split, a fixed seeded share of the file's rows that never trains.
- prompts: no images at all; the teacher's samples for the prompts, once the build has made them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.array import array_num_classes, load_array_split
from distill.data.cifar10 import CIFAR10_NUM_CLASSES, load_cifar10
from distill.data.digits import DIGITS_NUM_CLASSES, load_digits_split
from distill.data.errors import DatasetError
from distill.data.fashion_mnist import (
    FASHION_MNIST_NUM_CLASSES,
    FASHION_MNIST_SHAPE,
    find_root,
    load_fashion_mnist,
)
from distill.data.fashion_mnist import download as download_fashion_mnist
from distill.data.image_folder import ImageFolderDataset, class_folders
from distill.data.prompts import PromptDataset, check_prompts, read_prompts
from distill.data.resumable import ResumableLoader, ResumableSampler
from distill.data.toy2d import TOY2D_NAMES, make_toy2d

DATASET_NAMES: tuple[str, ...] = (
    *TOY2D_NAMES,
    "digits",
    "fashion_mnist",
    "image_folder",
    "cifar10",
    "array",
    "prompts",
)
REFERENCE_SPLITS = ("test", "validation")
DEFAULT_2D_REFERENCE_SIZE = 10_000  # docs/methods.md §12.4: SW / MMD want n >= 10k


def train_seed(seed: int) -> int:
    """Seed of the 2-D training draw; even, so it never equals a ``reference_seed``."""
    return 2 * seed


def reference_seed(seed: int) -> int:
    """Seed of a 2-D reference draw; odd, so it never equals a ``train_seed``."""
    return 2 * seed + 1


class TensorPairDataset(Dataset[tuple[Tensor, Tensor]]):
    """``(x[i], y[i])`` from in-memory tensors, with a vectorised batch fetch.

    ``DataLoader`` calls ``__getitems__`` with a whole batch of indices, so a batch is one
    gather instead of ``batch_size`` indexing calls plus a stack (~25x faster for 2-D points).
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def collate_pair(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for ``TensorPairDataset``: its ``__getitems__`` already returns the batch."""
    return batch


def seeded_subset(total: int, n: int | None, seed: int) -> Tensor:
    """Sorted indices of ``min(n, total)`` distinct items chosen by ``seed`` (all if ``n`` is None)."""
    if n is None or n >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n].sort().values


class DataModule(L.LightningDataModule):
    """Training batches and evaluation references for one named dataset.

    Args:
        name: one of ``DATASET_NAMES``.
        batch_size: per-device batch size (Lightning batches are per device).
        num_workers: DataLoader worker processes.
        seed: seeds the 2-D training draw and the shuffling order.
        num_train: number of generated training points (2-D toys only).
        path: image folder (``image_folder``), text file of prompts, one a line (``prompts``), or
            ``.npy`` / ``.npz`` file (``array``, see ``distill.data.array``).
        root: folder holding ``cifar-10-batches-py`` (``cifar10``), or the four IDX files
            (``fashion_mnist``; None: found as ``distill.data.fashion_mnist`` describes).
        download_root: where ``fashion_mnist`` downloads to, and looks for torchvision's layout.
        reference_split: what evaluation scores against (``fashion_mnist``): ``test`` or ``validation``.
        validation_fraction: share of an ``array`` file's rows held out as its validation split.
        subset: train on this many training examples only, a subset chosen by ``seed`` (quick runs; None: all).
        resolution: output size for ``image_folder`` and ``prompts`` (cifar10 is 32, digits 8).
        channels: 3 or 1 for ``image_folder`` and ``prompts``.
        class_folders: ``image_folder`` labelled by first-level subfolder (class-conditional teachers).
        captions: ``image_folder`` with a caption per image (text-conditional teachers; ``captions``).
        download: let ``prepare_data`` fetch CIFAR-10 or Fashion-MNIST (needs network).
        prompts: the prompts of ``prompts`` listed in the config (instead of ``path``).
        repeats: rows per prompt of ``prompts`` (each its own noise, so its own teacher sample).
        sample_steps: Heun steps of the teacher samples that stand in for images (``prompts``).
    """

    def __init__(
        self,
        name: str,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        num_train: int = 20_000,
        path: str | Path | None = None,
        root: str | Path | None = None,
        download_root: str | Path | None = None,
        reference_split: str = "test",
        validation_fraction: float = 0.1,
        subset: int | None = None,
        resolution: int | None = None,
        channels: int = 3,
        download: bool = False,
        class_folders: bool = False,
        captions: bool = False,
        prompts: list[str] | None = None,
        repeats: int = 1,
        sample_steps: int = 32,
    ) -> None:
        super().__init__()
        if name not in DATASET_NAMES:
            raise DatasetError(f"dataset.name={name!r} is unknown; choose one of {', '.join(DATASET_NAMES)}")
        if batch_size < 1:
            raise DatasetError(f"batch_size={batch_size}; use a positive batch size")
        if name == "image_folder" and (path is None or resolution is None):
            raise DatasetError("dataset image_folder needs dataset.path=<folder> and dataset.resolution=<int>")
        if name == "prompts" and (resolution is None or (path is None) == (prompts is None)):
            raise DatasetError(
                "dataset prompts needs dataset.resolution=<int> (of the teacher's images) and one of "
                "dataset.path=<text file, one prompt a line> or dataset.prompts=[...]"
            )
        if name == "array" and path is None:
            raise DatasetError("dataset array needs dataset.path=<file.npy or file.npz>")
        if reference_split not in REFERENCE_SPLITS:
            raise DatasetError(
                f"dataset.reference_split={reference_split!r}; choose test (reported numbers) or "
                "validation (choosing defaults)"
            )
        if name == "cifar10" and root is None:
            raise DatasetError("dataset cifar10 needs dataset.root=<folder holding cifar-10-batches-py>")
        self.save_hyperparameters()
        self.name, self.batch_size, self.seed = name, batch_size, seed
        self.num_workers, self.num_train = num_workers, num_train
        self.download, self.channels = download, channels
        self.path = None if path is None else Path(path)
        self.root = None if root is None else Path(root)
        self.download_root = download_root
        self.reference_split, self.validation_fraction = reference_split, validation_fraction
        if subset is not None and subset < 1:
            raise DatasetError(f"dataset.subset={subset}; give a positive number of training examples, or null for all")
        self.subset = subset
        self.resolution = resolution
        self.class_folders, self.captioned = class_folders, captions
        self.prompts, self.repeats, self.sample_steps = prompts, repeats, sample_steps
        self._reference: Tensor | None = None  # prompts: the teacher's samples, in pixels
        self._train: Dataset | None = None
        self._pixel_reference: Dataset | None = None  # the images, once a latent teacher replaces them
        self._cifar_test: Tensor | None = None

    # ---- static description (valid before setup) -------------------------------------------

    @property
    def kind(self) -> Literal["2d", "image"]:
        """``2d`` for point sets (the 2-D toys, and an array of points of any dimension), else ``image``."""
        if self.name == "array":
            return "2d" if self.train_dataset[0][0].ndim == 1 else "image"
        return "2d" if self.name in TOY2D_NAMES else "image"

    @property
    def captions(self) -> list[str]:
        """Each training image's caption, indexed by its label (``captions=True`` only; else empty), or
        the prompts of a prompt-only dataset."""
        if self.name == "prompts":
            return self.prompt_list
        dataset = self.train_dataset if self.captioned else None
        return list(getattr(dataset, "captions", []))

    @property
    def prompt_only(self) -> bool:
        return self.name == "prompts"

    @property
    def prompt_list(self) -> list[str]:
        """The prompts of ``prompts``: the config's list, or the file's lines."""
        if self.prompts is not None:
            return check_prompts(self.prompts, "dataset.prompts")
        return check_prompts(read_prompts(self.path), f"dataset.path={self.path}")

    def use_reference(self, samples: Tensor) -> None:
        """Score against ``samples`` (a prompt-only dataset has no images: the teacher's samples)."""
        self._reference = samples

    @property
    def num_classes(self) -> int:
        """Number of label classes; 0 for unconditional sets."""
        if self.name == "image_folder" and self.class_folders:
            return len(class_folders(self.path)) if self.path.is_dir() else 0
        if self.name == "array":
            return array_num_classes(self.path)
        return {
            "digits": DIGITS_NUM_CLASSES,
            "cifar10": CIFAR10_NUM_CLASSES,
            "fashion_mnist": FASHION_MNIST_NUM_CLASSES,
        }.get(self.name, 0)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (2,), (1, 8, 8), (1, 28, 28), (3, 32, 32), an array's rows, or (channels, res, res)."""
        if self.name == "array":
            return tuple(self.train_dataset[0][0].shape)
        if self.kind == "2d":
            return (2,)
        if self.name == "digits":
            return (1, 8, 8)
        if self.name == "cifar10":
            return (3, 32, 32)
        if self.name == "fashion_mnist":
            return FASHION_MNIST_SHAPE
        return (self.channels, self.resolution, self.resolution)

    # ---- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place a download may happen.
        if self.name == "cifar10" and self.download:
            for train in (True, False):
                load_cifar10(self.root, train=train, download=True)
        if self.name == "fashion_mnist" and self.download:
            download_fashion_mnist(self.root if self.root is not None else self.download_root)

    def setup(self, stage: str | None = None) -> None:
        """Build the training set (idempotent)."""
        if self._train is not None:
            return
        self._train = self._build_train()
        if self.subset is not None:
            if not isinstance(self._train, TensorPairDataset):
                raise DatasetError(
                    f"dataset.subset is for in-memory sets (toys, digits, fashion_mnist, cifar10, array), "
                    f"not {self.name}: leave it null"
                )
            keep = seeded_subset(len(self._train), self.subset, self.seed)
            self._train = TensorPairDataset(self._train.x[keep], self._train.y[keep])
        if len(self._train) == 0:
            raise DatasetError(
                f"the training set of dataset {self.name!r} is empty; "
                + ("set dataset.num_train > 0" if self.kind == "2d" else "add training images")
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded), ``drop_last`` loader of ``(x, y)`` batches that resumes mid-epoch.

        Under several processes each rank reads its own share (the Trainer must not swap in a
        ``DistributedSampler``: ``use_distributed_sampler=False``).
        """
        dataset = self.train_dataset
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if len(dataset) // world_size < self.batch_size:
            raise DatasetError(
                f"batch_size={self.batch_size} exceeds the {len(dataset) // world_size} training examples "
                f"of {self.name!r} per device, so drop_last leaves no batch; lower the batch size"
            )
        in_memory = isinstance(dataset, TensorPairDataset)
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(len(dataset), self.batch_size, self.seed, rank, world_size),
            drop_last=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),  # workers' seeds, never the global RNG
            collate_fn=collate_pair if in_memory else None,
            persistent_workers=self.num_workers > 0,
        )

    # ---- data access -----------------------------------------------------------------------

    @property
    def train_dataset(self) -> Dataset:
        """The training set, set up on first access."""
        self.setup()
        assert self._train is not None
        return self._train

    @property
    def train_size(self) -> int:
        return len(self.train_dataset)

    def use_training_set(self, dataset: Dataset) -> None:
        """Train on ``dataset`` instead (a latent teacher's encoded images; labels kept). An image
        folder's references stay its decoded images: samples are scored in pixels."""
        if self._pixel_reference is None:
            self._pixel_reference = self.train_dataset
        self._train = dataset

    def train_labels(self) -> Tensor:
        """The training labels, (N,) int64, in ``train_tensor``'s order."""
        dataset = self.train_dataset
        if isinstance(dataset, TensorPairDataset):
            return dataset.y
        if hasattr(dataset, "labels"):  # an image folder: no need to decode the images
            return torch.tensor(dataset.labels, dtype=torch.int64)
        return torch.stack([dataset[i][1] for i in range(len(dataset))])

    def train_tensor(self) -> Tensor:
        """All training inputs, (N, *data_shape); decodes every file for image folders."""
        dataset = self.train_dataset
        if isinstance(dataset, TensorPairDataset):
            return dataset.x
        return torch.stack([dataset[i][0] for i in range(len(dataset))])

    def reference_samples(self, n: int | None = None, seed: int = 0) -> Tensor:
        """Evaluation reference, disjoint from the training data (see the module docstring).

        Args:
            n: 2-D toys: points to draw (default 10k). Image sets: at most ``n`` images, a
                seeded subset; None (the default) returns the whole reference set.
            seed: chooses the 2-D draw or the image subset.

        Returns:
            (n', *data_shape) float32.
        """
        if self.name == "array":
            images = load_array_split(self.path, "validation", self.validation_fraction)[0]
            return images[seeded_subset(len(images), n, seed)]
        if self.kind == "2d":
            count = DEFAULT_2D_REFERENCE_SIZE if n is None else n
            return make_toy2d(self.name, count, reference_seed(seed))
        if self.prompt_only:
            if self._reference is None:
                raise DatasetError(
                    "dataset=prompts has no images to score against: pass "
                    "eval.reference_stats=<FID statistics .npz of the target image set>"
                )
            return self._reference[seeded_subset(len(self._reference), n, seed)]
        if self.name == "digits":
            images = load_digits_split("heldout")[0]
        elif self.name == "cifar10":
            if self._cifar_test is None:
                self._cifar_test = load_cifar10(self.root, train=False)[0]
            images = self._cifar_test
        elif self.name == "fashion_mnist":
            images = load_fashion_mnist(self.fashion_mnist_root, self.reference_split)[0]
        else:
            dataset = self._pixel_reference if self._pixel_reference is not None else self.train_dataset
            idx = seeded_subset(len(dataset), n, seed)
            return torch.stack([dataset[int(i)][0] for i in idx])
        return images[seeded_subset(len(images), n, seed)]

    @property
    def fashion_mnist_root(self) -> Path:
        """The folder the four Fashion-MNIST files are read from (downloaded first if asked)."""
        if self.download and not self.trainer:  # outside Lightning, prepare_data has not run
            self.prepare_data()
        return find_root(self.root, self.download_root)

    def _build_train(self) -> Dataset:
        if self.name == "array":
            return TensorPairDataset(*load_array_split(self.path, "train", self.validation_fraction))
        if self.name == "fashion_mnist":
            return TensorPairDataset(*load_fashion_mnist(self.fashion_mnist_root, "train"))
        if self.kind == "2d":
            x = make_toy2d(self.name, self.num_train, train_seed(self.seed))
            return TensorPairDataset(x, torch.zeros(len(x), dtype=torch.int64))
        if self.name == "digits":
            return TensorPairDataset(*load_digits_split("train"))
        if self.name == "cifar10":
            return TensorPairDataset(*load_cifar10(self.root, train=True))
        if self.prompt_only:
            return PromptDataset(self.prompt_list, self.data_shape, self.repeats)
        return ImageFolderDataset(
            self.path, self.resolution, self.channels, labelled=self.class_folders, captioned=self.captioned
        )
