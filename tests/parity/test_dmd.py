"""DMD (v1) parity: its distribution-matching gradient and its regression loss on teacher ODE pairs.

DMD v1's training code is not public. The DM gradient is restated from the paper (Yin et al. 2024a,
"One-step Diffusion with Distribution Matching Distillation", Sec. 3: the score difference weighted
by ``w_t = sigma_t^2 / alpha_t * C S / ||mu_real(x_t, t) - x||_1``) and checked against its code
form in tianweiy/DMD2 @ 8d8fa55 (main/edm/edm_guidance.py:102-111). The regression loss is restated
from the same authors' ODE-pair regression, main/train_sd_ode.py:262-283, with the squared error
in place of LPIPS (no LPIPS weights here; conf/method/dmd.yaml says so). The one-step generator
reads pure noise at EDM's sigma_max = 80, as DMD's ImageNet generator does.
"""

import copy

import torch
import torch.nn.functional as F

from distill.core.dmd import dm_gradient, dm_loss
from distill.methods import DMD2
from distill.teachers.edm import edm_teacher
from tests.teachers.edm_pickles import randomized, tiny_edm

DT = torch.float64


def setup():
    net, _ = tiny_edm("song")
    teacher = edm_teacher(net.double(), {})
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    randomized(student.net, seed=2)  # a generator that is no longer the teacher
    method = DMD2(
        generator_times=[1.0],
        fake_updates_per_generator=1,
        gan_weight=0.0,
        regression_weight=0.25,
        regression_pairs=6,
        pairs_per_step=6,
    )
    method.attach(teacher, student)
    randomized(method.fake_score.net, seed=1)
    return method, teacher, student


def test_dm_gradient_and_loss_are_dmds_weighted_score_difference():
    method, teacher, _ = setup()
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8, dtype=DT).clamp(-1, 1)
    sigma = torch.tensor([0.5, 5.0, 40.0], dtype=DT)
    eps = torch.randn_like(x)
    x_t = x + sigma.reshape(-1, 1, 1, 1) * eps  # EDM: alpha_t = 1, sigma_t = sigma
    mu_real = teacher.model.net(x_t, sigma)
    mu_fake = method.fake_score.net(x_t, sigma)
    # DMD Sec. 3: grad = w_t alpha_t (s_fake - s_real), s(x_t) = -(x_t - alpha_t mu) / sigma_t^2,
    # w_t = sigma_t^2 / alpha_t * C S / ||mu_real - x||_1 (per sample)
    score = lambda mu: -(x_t - mu) / sigma.reshape(-1, 1, 1, 1) ** 2  # noqa: E731
    cs = x[0].numel()
    w = sigma**2 * cs / (mu_real - x).abs().flatten(1).sum(dim=1)
    official = w.reshape(-1, 1, 1, 1) * (score(mu_fake) - score(mu_real))
    torch.testing.assert_close(dm_gradient(x, mu_real, mu_fake), official, rtol=1e-10, atol=1e-12)
    # the loss of the project's DM term at those levels: 0.5 mse(x, sg(x - grad)) (edm_guidance.py:111)
    s = sigma / (1 + sigma)
    x_ours = x.clone().requires_grad_(True)
    method.dm_term(x_ours, teacher, s=s, eps=eps).backward()
    x_off = x.clone().requires_grad_(True)
    F.mse_loss(x_off, (x_off - official).detach()).mul(0.5).backward()
    torch.testing.assert_close(x_ours.grad, x_off.grad, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(dm_loss(x, official), 0.5 * F.mse_loss(x, x - official))


def test_regression_loss_is_the_ode_pair_regression_of_the_one_step_generator():
    method, teacher, student = setup()
    torch.manual_seed(0)
    method.pair_noise = torch.randn(6, 1, 8, 8, dtype=DT)
    method.pair_target = torch.randn(6, 1, 8, 8, dtype=DT).clamp(-1, 1)  # a full set: nothing grows
    like = torch.zeros(4, 1, 8, 8, dtype=DT)
    torch.manual_seed(1)
    ours = method.regression_term(student, teacher, like)
    torch.manual_seed(1)
    idx = torch.randint(6, (4,))  # a random batch of the fixed pairs (train_sd_ode.py: a shuffled ODE-pair loader)
    ode_noises, ode_images = method.pair_noise[idx], method.pair_target[idx]
    # DMD's one-step generator at pure noise: D(80 z; 80); train_sd_ode.py:262-283 with MSE for LPIPS
    pred = student.net(80.0 * ode_noises, torch.full((4,), 80.0, dtype=DT))
    official = torch.mean((pred - ode_images) ** 2)
    assert official > 0
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=0)
