"""Reflow / InstaFlow parity: the reflow flow-matching loss and the one-step distillation loss
against a float64 restatement of gnobitab/RectifiedFlow @ 5a1fd4d ImageGeneration/losses.py:70-131
(``get_rectified_flow_loss_fn`` with ``reflow_flag``, ``reduce_mean=True``, ``reflow_loss='l2'``).

The official time runs the other way: t = 0 is noise (z0), t = 1 data, and its network predicts
``data - z0``; the project's FM time is s = 1 - t and its velocity ``eps - x``, so the official
model is restated as ``model(x, t) = -student(x, 1 - t)``. The official draws t in [eps, 1) with
eps = 1e-3 and distils at t = eps; the project draws s in [0, 1) and distils at s = 1 exactly
(the restatement takes eps = 0; the config headers list this).
"""

import pytest
import torch

from distill.methods.reflow import Reflow
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel

DT = torch.float64


def official_reflow_loss(model, z0, data, t, schedule):
    # gnobitab/RectifiedFlow ImageGeneration/losses.py:80-131, reflow_flag, l2, reduce_mean (per-sample mean)
    batch = data.detach().clone()
    if schedule == "t0":  # distil for t = 0 (k = 1): t = 0 * (T - eps) + eps, here eps = 0
        t = torch.zeros(batch.shape[0], dtype=DT)
    t_expand = t.view(-1, *[1] * (batch.ndim - 1))
    perturbed_data = t_expand * batch + (1.0 - t_expand) * z0
    target = batch - z0
    score = model(perturbed_data, t)
    losses = torch.square(score - target)
    return torch.mean(losses.reshape(losses.shape[0], -1).mean(dim=-1))


def method_with_pairs(z0, data, **kwargs):
    method = Reflow(rounds=1, steps_per_round=5, distill_steps=5, **kwargs)
    method._shards, method._shards_stage = object(), 0  # the stage's pairs are the fixed ones below
    method.batch_pairs = lambda batch_size, like: (z0, data, None)
    return method


@pytest.mark.parametrize("stage", ["reflow", "distill"])
def test_reflow_and_distillation_losses_and_gradients_equal_the_official(stage):
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((3,), width=16, depth=1)).to(DT)
    z0, data = torch.randn(32, 3, dtype=DT), torch.randn(32, 3, dtype=DT) * 0.5 + 1.0
    method = method_with_pairs(z0, data)
    if stage == "distill":
        method.stage.fill_(1)
        method._shards_stage = 1
    torch.manual_seed(5)
    ours = method.loss("student", data, None, student, step=0)["loss"]
    torch.manual_seed(5)
    s = torch.rand(32, dtype=DT)  # the project's FM time draw (reflow stage only)

    def official_model(x, t):
        return -student(x, 1 - t)

    theirs = official_reflow_loss(official_model, z0, data, 1 - s, "uniform" if stage == "reflow" else "t0")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    g_ours = torch.autograd.grad(ours, list(student.parameters()))
    g_theirs = torch.autograd.grad(theirs, list(student.parameters()))
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_the_distillation_target_is_the_coupled_endpoint_from_the_noise_end():
    """InstaFlow / RF distillation (k = 1): one Euler step from pure noise lands on the pair's
    endpoint; a student whose velocity is exactly ``z0 - x_hat`` at s = 1 has zero loss."""
    z0, data = torch.randn(8, 3, dtype=DT), torch.randn(8, 3, dtype=DT)
    method = method_with_pairs(z0, data)
    method.stage.fill_(1)
    method._shards_stage = 1

    def exact(x, s):
        assert torch.equal(s, torch.ones_like(s))  # called at the noise end only
        return x - data

    assert float(method.loss("student", data, None, exact, step=0)["loss"]) < 1e-30
