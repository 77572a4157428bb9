"""A small CNN on the 8x8 digits whose 64-d penultimate layer is the "Inception" of that dataset.

It trains on the digits TRAIN split only, so Fréchet distances against the held-out split
(``distill.data.digits``) are measured with features that never saw the reference images
(docs/methods.md §12.4). Weights are cached as safetensors next to a JSON record of how they were made.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.data.digits import DIGITS_NUM_CLASSES, load_digits_split
from distill.metrics.cached import load_cached

WEIGHTS_FILE = "digits_classifier.safetensors"
META_FILE = "digits_classifier.json"
FEATURE_DIM = 64
DEFAULT_EPOCHS = 15


class DigitsClassifier(nn.Module):
    """conv(1->32) -> conv(32->64) -> maxpool -> fc(1024->64) [features] -> fc(64->10) [logits]."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = DIGITS_NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    @property
    def head(self) -> nn.Linear:
        """The last layer, features -> logits."""
        return self.fc2

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, 8, 8) images in [-1, 1] -> (N, 64) penultimate (post-ReLU) features."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, 64, 4, 4)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 8, 8) images in [-1, 1] -> (N, 10) logits."""
        return self.fc2(self.features(x))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on (N, 1, 8, 8) images with (N,) labels."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


@contextmanager
def _single_thread() -> Iterator[None]:
    # 8x8 convolutions are too small to split: extra intra-op threads only add synchronisation,
    # and spin badly when other processes share the cores (3-20x slower measured on 2 cores).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _initial_classifier(seed: int = 0) -> DigitsClassifier:
    """A freshly initialised classifier, seeded by ``seed``; the global RNG state is left untouched
    (a run draws the same random numbers whether it trains the classifier or loads it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsClassifier()


def train_digits_classifier(
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 2e-3,
    progress: bool = True,
) -> DigitsClassifier:
    """Train a ``DigitsClassifier`` on the digits train split (never the held-out split).

    Deterministic given ``seed``; the global RNG state and thread count are left untouched.
    About 98 % held-out accuracy in ~3 s on one CPU core (it always trains on the CPU).

    Returns:
        The model in eval mode with gradients disabled.
    """
    images, labels = load_digits_split("train")
    model = _initial_classifier(seed)
    with _single_thread():
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        for _ in tqdm(range(epochs), desc="digits classifier", disable=not progress, leave=False):
            model.train()
            for idx in torch.randperm(len(images), generator=gen).split(batch_size):
                # Random 1-pixel shifts: 1257 images overfit quickly without a little augmentation.
                shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
                x = torch.roll(images[idx], shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    return model.eval().requires_grad_(False)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    # Write-then-rename, so a concurrent reader (another rank) never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_digits_classifier(model: DigitsClassifier, cache_dir: Path, metadata: dict) -> None:
    """Write ``digits_classifier.safetensors`` and its JSON metadata into ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(cache_dir / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    _atomic_write(cache_dir / META_FILE, lambda p: p.write_text(json.dumps(metadata, indent=2)))


def load_digits_classifier(cache_dir: Path) -> tuple[DigitsClassifier, dict]:
    """Load cached weights (safetensors only, never pickle) and metadata; raises if corrupt."""
    metadata = json.loads((cache_dir / META_FILE).read_text())
    model = _initial_classifier()  # its initialisation is discarded, and must not move the run's RNG either
    model.load_state_dict(load_file(str(cache_dir / WEIGHTS_FILE)))
    return model.eval().requires_grad_(False), metadata


def load_or_train_digits_classifier(
    cache_dir: str | Path, seed: int = 0, epochs: int = DEFAULT_EPOCHS, progress: bool = True
) -> DigitsClassifier:
    """The cached classifier from ``cache_dir``, training (and caching) it when absent or corrupt.

    Args:
        cache_dir: folder for ``digits_classifier.safetensors`` and ``digits_classifier.json``.
        seed, epochs: used only when training.

    Returns:
        The model in eval mode with gradients disabled.
    """
    cache_dir = Path(cache_dir).expanduser()
    cached = load_cached(cache_dir, WEIGHTS_FILE, lambda d: load_digits_classifier(d)[0], "digits classifier")
    if cached is not None:
        return cached
    start = time.perf_counter()
    model = train_digits_classifier(seed=seed, epochs=epochs, progress=progress)
    seconds = time.perf_counter() - start
    heldout_accuracy = accuracy(model, *load_digits_split("heldout"))
    save_digits_classifier(
        model,
        cache_dir,
        {
            "architecture": "DigitsClassifier(conv32-conv64-pool-fc64-fc10)",
            "trained_on": "digits train split (load_digits_split('train'))",
            "seed": seed,
            "epochs": epochs,
            "heldout_accuracy": heldout_accuracy,
            "train_seconds": round(seconds, 2),
            "torch": torch.__version__,
        },
    )
    return model
