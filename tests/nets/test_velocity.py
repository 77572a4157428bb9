"""``VelocityModel``: copies are independent (students, EMA and target nets are deep copies)."""

import copy

import pytest
import torch

from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel


@pytest.mark.parametrize("scheme", ["fm", "edm"])
def test_a_deep_copy_runs_its_own_weights(scheme):
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=16, depth=1), scheme)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(0.5)
        x, s = torch.randn(4, 2), torch.rand(4) * 0.9 + 0.05
        assert not torch.allclose(copied(x, s), model(x, s))
        model.load_state_dict(copied.state_dict())
        torch.testing.assert_close(copied(x, s), model(x, s))


@pytest.mark.parametrize("precond", ["edm_scheme", "EDMPrecond", "VPPrecond", "VEPrecond", "EDM2Precond"])
def test_edm_networks_are_finite_at_clean_data_and_map_it_to_itself(precond):
    # At s = 0 (sigma = 0) an EDM network's c_noise = ln(sigma) / 4 is -inf and x0-prediction's
    # eps = (x - x0) / sigma is 0/0: ECT's r = 0 targets, PCM's first grid point and GDD's
    # clean-image features all asked for it. The process clamps sigma to sigma_min instead.
    from distill.nets.edm import EDMPrecond, VEPrecond, VPPrecond
    from distill.nets.edm2 import EDM2Precond
    from distill.teachers.edm import EDMVelocity
    from tests.teachers.edm_pickles import TINY_EDM2, TINY_SONG

    torch.manual_seed(0)
    if precond == "edm_scheme":
        model, shape = VelocityModel(TimeMLP((2,), width=16, depth=1), "edm"), (2,)
    else:
        cls = {
            "EDMPrecond": EDMPrecond,
            "VPPrecond": VPPrecond,
            "VEPrecond": VEPrecond,
            "EDM2Precond": EDM2Precond,
        }
        kwargs = dict(TINY_EDM2, label_dim=0, use_fp16=False) if precond == "EDM2Precond" else TINY_SONG
        model, shape = (
            EDMVelocity(cls[precond](img_resolution=8, img_channels=3, **kwargs)),
            (3, 8, 8),
        )
    x, s = torch.randn(2, *shape), torch.zeros(2)
    with torch.no_grad():
        v = model(x, s)
    assert torch.isfinite(v).all()
    torch.testing.assert_close(x - 0 * v, x)
