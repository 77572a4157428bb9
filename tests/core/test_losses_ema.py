"""Per-sample losses, EDM preconditioning and EMA math."""

import copy

import pytest
import torch
from torch import nn

from distill.core.ema import ema_update_
from distill.core.losses import edm_loss_weight, edm_precond, per_sample_mse, pseudo_huber


def test_per_sample_mse():
    a = torch.zeros(2, 3, 4, dtype=torch.float64)
    b = torch.ones(2, 3, 4, dtype=torch.float64)
    b[1] *= 2
    torch.testing.assert_close(per_sample_mse(a, b), torch.tensor([1.0, 4.0], dtype=torch.float64))


def test_pseudo_huber():
    a = torch.zeros(2, 4, dtype=torch.float64)
    b = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(pseudo_huber(a, b, 0.0), torch.tensor([5.0, 0.0], dtype=torch.float64))
    c = 1.5
    torch.testing.assert_close(pseudo_huber(a, b, c), torch.tensor([(25 + c**2) ** 0.5 - c, 0.0], dtype=torch.float64))


def test_edm_precond_identities():
    sd = 0.5
    sigma = torch.tensor([0.002, 0.3, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sd)
    # Unit-variance input and training target for data of std sd (EDM appendix B.6).
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones(4, dtype=torch.float64))
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones(4, dtype=torch.float64))
    # The loss weight cancels c_out^2: lambda * ||D - x0||^2 = ||F - F_target||^2.
    torch.testing.assert_close(edm_loss_weight(sigma, sd) * c_out**2, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(c_noise, 0.25 * torch.log(sigma))


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()


def test_ema_decay_zero_copies():
    model, ema = _net(0), _net(1)
    model[1].running_mean.fill_(0.7)
    ema_update_(ema, model, 0.0)
    for p, q in zip(model.state_dict().values(), ema.state_dict().values(), strict=False):
        assert torch.equal(p, q)


def test_ema_decay_half_averages_and_copies_buffers():
    model, ema = _net(0), _net(1)
    before = copy.deepcopy(ema)
    model[1].running_var.fill_(3.0)
    ema_update_(ema, model, 0.5)
    for (name, p), q0, q in zip(model.named_parameters(), before.parameters(), ema.parameters(), strict=False):
        torch.testing.assert_close(q, 0.5 * (p + q0), msg=name)
        assert not q.requires_grad or q.grad is None
    assert torch.equal(ema[1].running_var, model[1].running_var)


def test_ema_rejects_mismatched_modules():
    # the message names what differs (FSDP on one GPU once hid a network's own parameters)
    with pytest.raises(
        ValueError, match=r"only in the EMA copy \['bias', 'weight'\] \(2\), only in the model \['0.bias'"
    ):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)
