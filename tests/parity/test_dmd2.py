"""DMD2 parity (EDM recipe, ImageNet-64): the DM loss and its gradient, the fake-score loss, the
GAN head and its G / D losses and the Karras noise-level laws, against float64 restatements of the
official code, tianweiy/DMD2 @ 8d8fa55 (main/edm/edm_guidance.py, main/edm/train_edm.py), on a
tiny random EDM network (the teacher's and the fake score's are different random nets).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.gan import ns_d_loss, ns_g_loss
from distill.methods import DMD2
from distill.nets.discriminator import ConvHead, head_for
from distill.students.generator import generator_x0
from distill.teachers.edm import edm_teacher
from tests.teachers.edm_pickles import randomized, tiny_edm

DT = torch.float64


def official_karras_sigmas(n=1000, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    # tianweiy/DMD2 main/edm/edm_guidance.py:9-15 (get_sigmas_karras) and :61-67 (flipped: small first)
    ramp = torch.linspace(0, 1, n, dtype=DT)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.flip((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, dims=[0])


def official_dm_loss(latents, sigma, noise, real_unet, fake_unet):
    # tianweiy/DMD2 main/edm/edm_guidance.py:90-111 (compute_distribution_matching_loss)
    noisy_latents = latents + sigma.reshape(-1, 1, 1, 1) * noise
    with torch.no_grad():
        pred_real_image = real_unet(noisy_latents, sigma)
        pred_fake_image = fake_unet(noisy_latents, sigma)
        p_real = latents - pred_real_image
        p_fake = latents - pred_fake_image
        weight_factor = torch.abs(p_real).mean(dim=[1, 2, 3], keepdim=True)
        grad = torch.nan_to_num((p_real - p_fake) / weight_factor)
    return 0.5 * F.mse_loss(latents, (latents - grad).detach(), reduction="mean")


def official_fake_loss(latents, sigma, noise, fake_unet, sigma_data=0.5):
    # tianweiy/DMD2 main/edm/edm_guidance.py:134-161 (compute_loss_fake, weight_schedule karras)
    noisy_latents = latents + sigma.reshape(-1, 1, 1, 1) * noise
    fake_x0_pred = fake_unet(noisy_latents, sigma)
    weights = (sigma**-2 + 1.0 / sigma_data**2).reshape(-1, 1, 1, 1)
    return torch.mean(weights * (fake_x0_pred - latents) ** 2)


def setup(**kwargs):
    """A DMD2 on a float64 tiny EDM teacher whose fake score is a different random network."""
    net, _ = tiny_edm("song")
    teacher = edm_teacher(net.double(), {})
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = DMD2(generator_times=[1.0], dm_time_dist="karras", fake_score_weighting="edm", **kwargs)
    method.attach(teacher, student)
    randomized(method.fake_score.net, seed=1)
    method.fake_score.train()
    return method, teacher, student


def edm(velocity_model):
    """The raw EDM denoiser D(x, sigma) inside our velocity wrapper."""
    return lambda x, sigma: velocity_model.net(x, sigma)


def test_karras_table_is_dmd2s():
    from distill.core.dmd import karras_times

    sigma = official_karras_sigmas()
    torch.testing.assert_close(karras_times(), sigma / (1 + sigma), rtol=1e-14, atol=0)


def test_noise_level_laws_are_dmd2s_index_draws():
    method, _, _ = setup(gan_weight=3e-3)
    sigmas = official_karras_sigmas()
    like = torch.zeros(1, dtype=DT)
    n = 4096
    # each law against DMD2's own randint on the same generator state
    for law, (lo, hi) in {
        method._dm_times: (
            20,
            min(980 + 1, 1000),
        ),  # edm_guidance.py:69-70, 82-88 (min/max_step_percent 0.02/0.98)
        method._fake_times: (0, 1000),  # edm_guidance.py:138-145
        method._gan_times: (0, 1000),  # edm_guidance.py:175-179, --diffusion_gan_max_timestep 1000
    }.items():
        torch.manual_seed(3)
        ours = law(n, like)
        torch.manual_seed(3)
        sigma = sigmas[torch.randint(lo, hi, [n, 1, 1, 1]).flatten()]
        torch.testing.assert_close(ours, sigma / (1 + sigma), rtol=1e-13, atol=0)


def test_dm_loss_and_its_gradient_are_dmd2s():
    method, teacher, _ = setup()
    torch.manual_seed(0)
    latents = torch.randn(3, 1, 8, 8, dtype=DT).clamp(-1, 1)
    sigma = official_karras_sigmas()[torch.tensor([20, 500, 980])]
    noise = torch.randn_like(latents)

    x_ours = latents.clone().requires_grad_(True)
    ours = method.dm_term(x_ours, teacher, s=sigma / (1 + sigma), eps=noise)
    ours.backward()
    x_off = latents.clone().requires_grad_(True)
    official = official_dm_loss(x_off, sigma, noise, edm(teacher.model), edm(method.fake_score))
    official.backward()
    assert official > 0
    torch.testing.assert_close(ours, official, rtol=1e-9, atol=0)
    torch.testing.assert_close(x_ours.grad, x_off.grad, rtol=1e-9, atol=1e-15)


def test_fake_score_loss_is_dmd2s_edm_weighted_x0_loss():
    method, _, _ = setup()
    torch.manual_seed(1)
    latents = torch.randn(4, 1, 8, 8, dtype=DT).clamp(-1, 1)
    sigma = official_karras_sigmas()[torch.tensor([0, 300, 700, 999])]
    noise = torch.randn_like(latents)
    ours = method.fake_score_term(latents, sigma / (1 + sigma), noise)
    official = official_fake_loss(latents, sigma, noise, edm(method.fake_score))
    torch.testing.assert_close(ours, official, rtol=1e-9, atol=0)
    # and its gradient into the fake score's weights
    params = [p for p in method.fake_score.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    g_off = torch.autograd.grad(official, params, allow_unused=True)
    for a, b in zip(g_ours, g_off, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def official_cls_pred_branch(channels):
    # tianweiy/DMD2 main/edm/edm_guidance.py:47-56 (768 channels there; GroupNorm 32 groups)
    return nn.Sequential(
        nn.Conv2d(kernel_size=4, in_channels=channels, out_channels=channels, stride=2, padding=1),
        nn.GroupNorm(num_groups=32, num_channels=channels),
        nn.SiLU(),
        nn.Conv2d(kernel_size=4, in_channels=channels, out_channels=channels, stride=4, padding=0),
        nn.GroupNorm(num_groups=32, num_channels=channels),
        nn.SiLU(),
        nn.Conv2d(kernel_size=1, in_channels=channels, out_channels=1, stride=1, padding=0),
    ).double()


def test_dmd2_head_is_dmd2s_cls_pred_branch():
    torch.manual_seed(0)
    ours = head_for((64, 8, 8), single_logit=True).double()  # the ADM bottleneck is 8x8
    assert isinstance(ours, ConvHead)
    official = official_cls_pred_branch(64)
    official.load_state_dict({k.removeprefix("body."): v for k, v in ours.state_dict().items()})
    rep = torch.randn(3, 64, 8, 8, dtype=DT)
    # edm_guidance.py:189: logits = cls_pred_branch(rep).squeeze(dim=[2, 3]): one logit per sample
    torch.testing.assert_close(ours(rep).reshape(3, 1), official(rep).squeeze(dim=3).squeeze(dim=2))


def test_gan_losses_are_dmd2s():
    torch.manual_seed(0)
    real, fake = torch.randn(5, 1, dtype=DT), torch.randn(5, 1, dtype=DT)
    # edm_guidance.py:199 (generator) and :209-217 (guidance: classification_loss.mean())
    torch.testing.assert_close(ns_g_loss([fake]), F.softplus(-fake).mean())
    torch.testing.assert_close(ns_d_loss([real], [fake]), (F.softplus(fake) + F.softplus(-real)).mean())


def test_one_step_generator_is_dmd2s_d_of_80z_at_80():
    method, _, student = setup()
    torch.manual_seed(0)
    z = torch.randn(2, 1, 8, 8, dtype=DT)
    s = method.times[0].expand(2)
    ours = generator_x0(student, method.times[0] * z, s)
    # train_edm.py:218-225: scaled_noise = randn * conditioning_sigma (80) at timestep_sigma 80
    official = student.net(z * 80.0, torch.full((2,), 80.0, dtype=DT))
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
