"""SiD parity: the generator loss (and its gradient through both score networks), the noise law
and the fake score's EDM loss, against float64 restatements of mingyuanzhou/SiD @ cc1a31d
(training/sid_loss.py:26-55 generator_loss, :57-71 __call__; training/sid_training_loop.py reduces
both with ``loss.sum() * scaling / batch``), on tiny float64 velocity nets read as EDM denoisers.
"""

import torch

from distill.core.prediction import velocity_to_x0
from distill.core.sid import sid_sigmas
from distill.methods import SiD
from tests.parity.nets import Velocity

DT = torch.float64


def edm_denoiser(velocity):
    """The EDM view D(x, sigma) of an FM velocity net: x_s = x / (1 + sigma) at s = sigma / (1 + sigma)."""

    def denoise(x, sigma):
        sigma = sigma.reshape(-1)
        s = sigma / (1 + sigma)
        x_s = x / (1 + sigma[:, None])
        return velocity_to_x0(x_s, s, velocity(x_s, s))

    return denoise


def official_generator_loss(true_score, fake_score, images, sigma, noise, alpha=1.2, lsg=100.0):
    # sid_loss.py:26-55 with the noise level and noise given, then sid_training_loop.py's reduction
    y = images
    n = noise * sigma.reshape(-1, 1)
    y_real = true_score(y + n, sigma)
    y_fake = fake_score(y + n, sigma)
    with torch.no_grad():
        weight_factor = abs(y - y_real).to(torch.float32).mean(dim=[1], keepdim=True).clip(min=0.00001)
    loss = (y_real - y_fake) * ((y_real - y) - alpha * (y_real - y_fake)) / weight_factor
    return loss.sum().mul(lsg / len(y))


def official_fake_score_loss(fake_score, images, sigma, noise, sigma_data=0.5):
    # sid_loss.py:57-71 (__call__) with sigma and noise given, reduced as sid_training_loop.py does
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    y_fake = fake_score(images + noise * sigma.reshape(-1, 1), sigma)
    return (weight.reshape(-1, 1) * (y_fake - images) ** 2).sum() / len(images)


def test_generator_noise_levels_are_sids_ramp_draw():
    like = torch.zeros(1, dtype=DT)
    torch.manual_seed(3)
    ours = sid_sigmas(4096, 800, like)
    torch.manual_seed(3)
    rnd_t = torch.rand([4096, 1, 1, 1], dtype=DT) * 800 / 1000  # sid_loss.py:32-34
    min_inv, max_inv = 0.002 ** (1 / 7), 80 ** (1 / 7)
    official = ((max_inv + (1 - rnd_t) * (min_inv - max_inv)) ** 7).flatten()
    torch.testing.assert_close(ours, official, rtol=1e-13, atol=0)
    assert official.min() >= 0.002 and official.max() < 24.4  # tmax 800: sigma below (ramp at 0.8)^7 = 24.4


def test_generator_loss_and_its_gradient_through_both_networks_are_sids():
    teacher, fake = Velocity(3, seed=0), Velocity(3, seed=1)
    method = SiD()
    method.fake_score = fake
    torch.manual_seed(0)
    y = torch.randn(5, 3, dtype=DT)
    sigma = torch.tensor([0.002, 0.1, 0.7, 1.5, 2.8], dtype=DT)
    noise = torch.randn_like(y)

    y_ours = y.clone().requires_grad_(True)
    ours = method.generator_loss_scale * method.generator_term(y_ours, teacher, sigma, noise)
    ours.backward()
    assert all(p.grad is None for p in fake.parameters())  # the fake score's weights take no gradient
    y_off = y.clone().requires_grad_(True)
    official = official_generator_loss(edm_denoiser(teacher), edm_denoiser(fake), y_off, sigma, noise)
    official.backward()
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)  # the normaliser is float32 in both
    torch.testing.assert_close(y_ours.grad, y_off.grad, rtol=1e-6, atol=1e-12)


def test_fake_score_loss_is_edms_weighted_x0_loss():
    fake = Velocity(3, seed=1)
    method = SiD()
    method.fake_score = fake
    torch.manual_seed(1)
    y = torch.randn(6, 3, dtype=DT)
    sigma = torch.tensor([0.01, 0.2, 0.5, 1.0, 5.0, 40.0], dtype=DT)
    noise = torch.randn_like(y)
    ours = method.fake_score_term(y, sigma, noise)
    official = official_fake_score_loss(edm_denoiser(fake), y, sigma, noise)
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=0)
