"""A CNN on Fashion-MNIST whose 128-d penultimate layer is the feature space of ``fd_fmnist``.

It trains on the train split only (training images 0-54,999, ``distill.data.fashion_mnist``), so
Fréchet distances against the test split use features that never saw a reference image. The
weights are cached as safetensors next to a JSON record of how they were made, test accuracy
included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.core.io import atomic_write, load_weights, save_weights
from distill.data.fashion_mnist import FASHION_MNIST_NUM_CLASSES, load_fashion_mnist
from distill.metrics.cached import load_cached
from distill.metrics.digits_classifier import accuracy

WEIGHTS_FILE = "fmnist_classifier.safetensors"
META_FILE = "fmnist_classifier.json"
FEATURE_DIM = 128
DEFAULT_EPOCHS = 12


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class FashionClassifier(nn.Module):
    """conv32 -> pool -> conv64 -> conv64 -> pool -> conv128 -> pool -> fc(1152 -> 128) [features] -> fc(128 -> 10)."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = FASHION_MNIST_NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_block(1, 32),
            nn.MaxPool2d(2),  # 14x14
            conv_block(32, 64),
            conv_block(64, 64),
            nn.MaxPool2d(2),  # 7x7
            conv_block(64, 128),
            nn.MaxPool2d(2),  # 3x3
        )
        self.fc1 = nn.Linear(128 * 3 * 3, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) images in [-1, 1] -> (N, 128) penultimate (post-ReLU) features."""
        return F.relu(self.fc1(self.body(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) images in [-1, 1] -> (N, 10) logits."""
        return self.head(self.dropout(self.features(x)))


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (one shift per batch): clothes stay clothes."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)  # the background is black, -1 in model space
    return padded[:, :, 2 + shift[0] : 30 + shift[0], 2 + shift[1] : 30 + shift[1]]


def _initial_classifier(seed: int = 0) -> FashionClassifier:
    # Seeded without moving the global RNG: a run draws the same numbers whether it trains or loads this.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FashionClassifier()


def train_fmnist_classifier(
    images: Tensor,
    labels: Tensor,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 128,
    lr: float = 2e-3,
    progress: bool = True,
) -> FashionClassifier:
    """Train a ``FashionClassifier`` (AdamW, one-cycle cosine) on the given training images.

    Deterministic given ``seed``; the global RNG state is left untouched.

    Returns:
        The model in eval mode with gradients disabled.
    """
    model = _initial_classifier(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    bar = tqdm(total=steps, desc="fmnist classifier", disable=not progress, leave=False)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=gen)[: steps // epochs * batch_size].split(batch_size):
            loss = F.cross_entropy(model(augment(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return model.eval().requires_grad_(False)


def split_accuracy(model: nn.Module, data_root: Path, split: str) -> float | None:
    """Top-1 accuracy on one split; None for an empty split (a data set smaller than the standard one)."""
    images, labels = load_fashion_mnist(data_root, split)
    return accuracy(model, images, labels) if len(images) else None


def load_fmnist_classifier(cache_dir: Path) -> tuple[FashionClassifier, dict]:
    """Cached weights (safetensors, never pickle) and their record; raises if either is unreadable."""
    metadata = json.loads((cache_dir / META_FILE).read_text())
    model = _initial_classifier()
    model.load_state_dict(load_weights(cache_dir / WEIGHTS_FILE))
    return model.eval().requires_grad_(False), metadata


def load_or_train_fmnist_classifier(
    cache_dir: str | Path, data_root: Path, seed: int = 0, epochs: int = DEFAULT_EPOCHS, progress: bool = True
) -> FashionClassifier:
    """The cached classifier from ``cache_dir``, trained on ``data_root``'s train split (and cached)
    when absent or unreadable. Its record holds the test accuracy (about 93 % at the defaults)."""
    cache_dir = Path(cache_dir).expanduser()
    cached = load_cached(cache_dir, WEIGHTS_FILE, lambda d: load_fmnist_classifier(d)[0], "Fashion-MNIST classifier")
    if cached is not None:
        return cached
    start = time.perf_counter()
    model = train_fmnist_classifier(
        *load_fashion_mnist(data_root, "train"), seed=seed, epochs=epochs, progress=progress
    )
    seconds = time.perf_counter() - start
    record = {
        "architecture": "FashionClassifier(conv32-pool-conv64-conv64-pool-conv128-pool-fc128-fc10, BatchNorm)",
        "trained_on": "Fashion-MNIST train split (training images 0-54,999)",
        "seed": seed,
        "epochs": epochs,
        **{f"{split}_accuracy": split_accuracy(model, data_root, split) for split in ("validation", "test")},
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_weights(cache_dir / WEIGHTS_FILE, model.state_dict())
    atomic_write(cache_dir / META_FILE, lambda p: p.write_text(json.dumps(record, indent=2)))
    print(
        f"Fashion-MNIST classifier: test accuracy {record['test_accuracy']} after {seconds:.0f} s, "
        f"cached in {cache_dir}"
    )
    return model
