from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from distill.data.image_folder import pil_to_tensor
from distill.metrics.digits_classifier import DigitsClassifier
from distill.metrics.features import (
    INCEPTION_WEIGHTS_FILE,
    DigitsFeatures,
    InceptionFeatures,
    extract_features,
    to_uint8,
)


@pytest.mark.parametrize("path", [None, "/nonexistent/pt_inception.pth"])
def test_inception_without_weights_names_the_fix(path: str | None) -> None:
    with pytest.raises(FileNotFoundError) as err:
        InceptionFeatures(path)
    msg = str(err.value)
    assert f"eval.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE}" in msg
    assert "nothing downloads here" in msg
    assert INCEPTION_WEIGHTS_FILE == "weights-inception-2015-12-05-6726825d.pth"


def test_uint8_quantisation_inverts_the_loader_mapping() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    as_float = pil_to_tensor(Image.fromarray(levels.reshape(16, 16).numpy()))
    assert torch.equal(to_uint8(as_float).flatten(), levels)
    assert to_uint8(torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]


def test_digits_features_contract(digits_classifier: DigitsClassifier) -> None:
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    f = DigitsFeatures(digits_classifier)(x)
    assert f.shape == (5, 64) and f.dtype == torch.float32
    assert torch.equal(f, digits_classifier.features(x))
    with pytest.raises(ValueError, match=r"read \(N, 1, 8, 8\) images, got \(5, 3, 8, 8\)"):
        DigitsFeatures(digits_classifier)(torch.zeros(5, 3, 8, 8))


def test_digits_logits_from_features_equal_the_classifier(digits_classifier: DigitsClassifier) -> None:
    x = torch.rand(7, 1, 8, 8) * 2 - 1
    extractor = DigitsFeatures(digits_classifier)
    logits = extractor.logits(extractor(x))
    assert logits.shape == (7, 10)
    torch.testing.assert_close(logits, digits_classifier(x))


def test_extract_features_batches_equal_one_call(digits_classifier: DigitsClassifier) -> None:
    x = torch.rand(23, 1, 8, 8) * 2 - 1
    extractor = DigitsFeatures(digits_classifier)
    batched = extract_features(extractor, x, batch_size=5, progress=True)
    assert batched.shape == (23, 64)
    # float32 matmuls may round differently per batch size (features are ~10): relative 1e-5
    torch.testing.assert_close(batched, extractor(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="images is empty"):
        extract_features(extractor, x[:0])


@pytest.mark.slow
def test_inception_forward_with_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Builds torch-fidelity's network with random weights (never downloads) to check our
    # conversion: grayscale and odd sizes in, (N, 2048) out.
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
    state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(state, path)
    extractor = InceptionFeatures(path)
    assert extractor(torch.rand(2, 1, 8, 8) * 2 - 1).shape == (2, 2048)
    assert extractor(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 2048)
