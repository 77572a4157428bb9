"""distill.nets.lpips equals the reference implementation (the ``lpips`` package, richzhang's
PerceptualSimilarity v0.1 VGG) given the same weights, loads only local files, and names the fix
when one is missing."""

import warnings

import pytest
import torch

from distill.errors import ConfigError
from distill.nets.lpips import LPIPS

lpips = pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def reference_and_backbone(tmp_path_factory):
    """The reference LPIPS with a random VGG trunk (nothing downloaded; pnet_rand) and its packaged
    linear weights, plus that trunk saved as torchvision's VGG-16 state dict."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    trunk = {}
    for i in range(5):  # the reference keeps VGG features[a:b] as slice1..slice5, numbered as in features
        for name, tensor in getattr(reference.net, f"slice{i + 1}").state_dict().items():
            index, kind = name.split(".")
            trunk[f"features.{index}.{kind}"] = tensor
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(trunk, path)
    return reference, path


def test_distance_equals_the_reference_lpips(reference_and_backbone):
    reference, backbone = reference_and_backbone
    ours = LPIPS(backbone, resize=None)
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = reference(x, y).flatten()  # inputs in [-1, 1] (normalize=False)
        torch.testing.assert_close(ours(x, y), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours(x, x), torch.zeros(3))


def test_it_is_frozen_and_differentiable_in_its_inputs(reference_and_backbone):
    ours = LPIPS(reference_and_backbone[1], resize=64).train()
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    ours(x, torch.zeros(2, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_or_wrong_weights_name_the_files(tmp_path, reference_and_backbone):
    with pytest.raises(ConfigError, match="vgg16-397923af.pth"):
        LPIPS(tmp_path / "absent.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="not a VGG-16 state dict"):
        LPIPS(tmp_path / "wrong.pth")


def test_consistency_distillation_trains_on_lpips_of_prediction_and_target(reference_and_backbone, tmp_path):
    from distill.methods import ConsistencyDistillation
    from distill.nets.unet import UNet
    from distill.nets.velocity import VelocityModel

    torch.manual_seed(0)
    student = VelocityModel(UNet(8, channels=3, block_out_channels=(8, 16), norm_num_groups=4))
    teacher = VelocityModel(UNet(8, channels=3, block_out_channels=(8, 16), norm_num_groups=4)).eval()
    spec = {"backbone": str(reference_and_backbone[1]), "resize": 32}  # VGG pools 8 px away
    method = ConsistencyDistillation(num_scales=6, ema_target=0.0, loss="lpips", lpips=spec)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    loss = method.loss("student", x0, teacher, student, step=0)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert not any(k.startswith("lpips") for k in method.state_dict())  # VGG never checkpointed
    with pytest.raises(ConfigError, match="lpips.backbone"):
        ConsistencyDistillation(loss="lpips")


def test_reflow_distillation_takes_lpips_between_the_one_step_sample_and_its_pair(reference_and_backbone):
    from distill.methods import Reflow

    spec = {"backbone": str(reference_and_backbone[1]), "resize": 32}
    method = Reflow(rounds=0, distill=True, distill_loss="lpips", lpips=spec)
    x_pred, x_hat = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(method.lpips(x_pred, x_hat), LPIPS(spec["backbone"], resize=32)(x_pred, x_hat))
    with pytest.raises(ConfigError, match="RGB images"):
        method.lpips(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8))
