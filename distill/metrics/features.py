"""Feature extractors behind one contract: ``extractor(images (N, C, H, W) in [-1, 1]) -> (N, D)``.

Fréchet distances, precision/recall and the like take features, not images, so swapping the
backbone (digits CNN, Inception) is a one-line change. Nothing here downloads weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.metrics.digits_classifier import DigitsClassifier

# torch-fidelity's port of the TF Inception-v3 (2015-12-05) FID weights, as named in its release.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE


class FeatureExtractor(Protocol):
    def __call__(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images in [-1, 1] -> (N, D) float features."""
        ...


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 0..255, quantised like EDM's ``x * 127.5 + 128`` then truncation."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class ClassifierFeatures(nn.Module):
    """Penultimate features of a data set's own classifier (``features(x)``, then a linear ``head``).

    Args:
        classifier: trained on the data set's train split only.
        image_shape: the (C, H, W) it reads; other shapes are refused.
    """

    def __init__(self, classifier: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.image_shape = tuple(image_shape)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{type(self.classifier).__name__} features read (N, {', '.join(map(str, self.image_shape))}) "
                f"images, got {tuple(images.shape)}"
            )
        device = next(self.classifier.parameters()).device
        return self.classifier.features(images.to(device, torch.float32)).float()

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        """(N, D) features from ``forward`` -> (N, classes) logits on the CPU.

        Only the classifier's last layer: one feature pass serves both the Fréchet distance and
        the class histogram.
        """
        head = self.classifier.head
        return head(features.to(head.weight.device, torch.float32)).cpu()


class DigitsFeatures(ClassifierFeatures):
    """64-d penultimate features of a ``DigitsClassifier`` (for (N, 1, 8, 8) digits)."""

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__(classifier, (1, 8, 8))


class InceptionFeatures(nn.Module):
    """2048-d pool3 features of torch-fidelity's TF-compatible Inception-v3 (FID's backbone).

    Any size and 1 or 3 channels: torch-fidelity resizes uint8 input to 299 itself (TF-1.x
    compatible bilinear), and grayscale is repeated to RGB.

    Args:
        weights_path: local ``weights-inception-2015-12-05-6726825d.pth``; required, since
            torch-fidelity would otherwise download it.
    """

    def __init__(self, weights_path: str | Path | None) -> None:
        super().__init__()
        if weights_path is None or not Path(weights_path).expanduser().is_file():
            raise FileNotFoundError(
                f"Inception weights not found (got {weights_path!r}); nothing downloads here. Fetch "
                f"{INCEPTION_WEIGHTS_URL} on a machine with network and pass "
                f"eval.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE}"
            )
        # Imported here: torch-fidelity is heavy and only needed for Inception metrics.
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(Path(weights_path).expanduser()),
        )

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects (N, 1|3, H, W) images, got {tuple(images.shape)}")
        x = to_uint8(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        device = next(self.net.parameters()).device
        return self.net(x.to(device))[0].float()


def extract_features(
    extractor: FeatureExtractor, images: Tensor, batch_size: int = 500, progress: bool = False
) -> Tensor:
    """Run ``extractor`` over ``images`` in batches.

    Args:
        extractor: any callable honouring the contract above.
        images: (N, C, H, W) in [-1, 1], on any device.
        batch_size: images per call.
        progress: show a tqdm bar.

    Returns:
        (N, D) features on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size")
    chunks = [
        extractor(images[i : i + batch_size]).detach().cpu()
        for i in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False)
    ]
    if not chunks:
        raise ValueError("images is empty; pass at least one image")
    return torch.cat(chunks)
