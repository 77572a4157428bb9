"""Adversarial losses and R1 against hand-computed values."""

import math

import pytest
import torch

from distill.core.gan import (
    D_LOSSES,
    G_LOSSES,
    average_heads,
    hinge_d_loss,
    hinge_g_loss,
    hinge_g_loss_pcm,
    mean_probability,
    ns_d_loss,
    ns_g_loss,
    r1_penalty,
)

REAL = torch.tensor([2.0, -0.5], dtype=torch.float64)
FAKE = torch.tensor([0.5, -3.0], dtype=torch.float64)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_non_saturating_losses():
    d = (softplus(-2.0) + softplus(0.5)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    assert ns_d_loss(REAL, FAKE).item() == pytest.approx(d)
    assert ns_g_loss(FAKE).item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2)


def test_hinge_losses():
    # relu(1 - real) = [0, 1.5]; relu(1 + fake) = [1.5, 0].
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.75 + 0.75)
    assert hinge_g_loss(FAKE).item() == pytest.approx(1.25)
    # PCM's variant stops pushing a fake already scored above the margin: relu(1 - fake) = [0.5, 4].
    assert hinge_g_loss_pcm(FAKE).item() == pytest.approx(2.25)
    assert hinge_g_loss_pcm(torch.tensor([1.5, 3.0])).item() == 0.0


def test_per_location_logits_average_over_every_location():
    logits = torch.tensor([[[0.0, 2.0], [4.0, 6.0]]])  # (B=1, 2, 2)
    assert hinge_g_loss(logits).item() == pytest.approx(-3.0)


def test_multi_head_losses_average_the_heads():
    heads_real = [REAL, torch.tensor([3.0, 3.0], dtype=torch.float64)]
    heads_fake = [FAKE, torch.tensor([-2.0, -2.0], dtype=torch.float64)]
    # The second head is beyond both margins: its D loss is 0, so the mean halves head one's 1.5.
    assert hinge_d_loss(heads_real, heads_fake).item() == pytest.approx(0.75)
    assert hinge_g_loss(heads_fake).item() == pytest.approx((1.25 + 2.0) / 2)
    with pytest.raises(ValueError, match="head counts differ"):
        average_heads(lambda r, f: r.mean(), heads_real, heads_fake[:1])
    with pytest.raises(ValueError, match="at least one head"):
        hinge_g_loss([])


def test_r1_penalty_of_a_linear_discriminator():
    # D(x) = w . x has gradient w everywhere: R1 = gamma / 2 * ||w||^2 for every sample.
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(x, x @ w, gamma=0.1)
    assert penalty.item() == pytest.approx(0.05 * 25.0)
    # Two identical heads average to the same D, and the penalty stays differentiable for D's step.
    w.requires_grad_(True)
    penalty = r1_penalty(x, [x @ w, x @ w], gamma=0.1)
    (grad_w,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad_w, 0.1 * w.detach())


def test_r1_penalty_of_a_quadratic_discriminator_is_per_sample():
    # D(x) = ||x||^2 / 2 per sample: grad = x, so R1 = gamma / 2 * mean_b ||x_b||^2.
    x = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(x, 0.5 * x.pow(2).sum(1), gamma=2.0)
    assert penalty.item() == pytest.approx((5.0 + 9.0) / 2)


def test_registries_name_every_loss():
    assert set(D_LOSSES) == {"ns", "hinge"}
    assert set(G_LOSSES) == {"ns", "hinge", "hinge_pcm"}


def test_mean_probability_averages_every_logit_then_the_heads():
    heads = [torch.zeros(2, 3), torch.tensor([math.log(3.0)])]  # sigmoid: 0.5 everywhere, and 0.75
    torch.testing.assert_close(mean_probability(heads), torch.tensor(0.625))
    assert not mean_probability([torch.zeros(2, requires_grad=True)]).requires_grad
