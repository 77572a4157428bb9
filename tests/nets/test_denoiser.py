"""``VelocityModel``: copies are independent (students, EMA and target nets are deep copies)."""

import copy

import pytest
import torch

from distill.nets.denoiser import VelocityModel
from distill.nets.mlp import TimeMLP


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
