"""Progressive distillation parity: the PD target (two teacher DDIM steps, the implied x target, the
last-step rule) and the truncated-SNR loss against a float64 restatement of
google-research/google-research diffusion_distillation/diffusion_distillation/dpm.py @ ff09859
(``Model.training_losses``), which works in VP coordinates and logSNR time.
"""

import math

import pytest
import torch
from torch import nn

from distill.methods.progressive import ProgressiveDistillation
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel

DT = torch.float64


class CurvedTeacher(nn.Module):
    """An analytic FM velocity field v(z, s)."""

    def forward(self, z, s):
        s = s.view(-1, *[1] * (z.ndim - 1))
        return torch.sin(2 * z) * (1 + s) - z * s


def logsnr_cosine(u):
    # the cosine schedule without dpm.py's [-20, 20] clip, so its times are the project's cosine grid
    return -2 * torch.log(torch.tan(0.5 * math.pi * u))


def x_model(velocity):
    """A velocity model as the x-predicting ``model_fn(z_vp, logsnr)`` dpm.py runs (mean_type 'x'):
    FM time s = sigma / (alpha + sigma), FM state z_vp / (alpha + sigma), x = z - s v."""

    def model_fn(z, logsnr):
        alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
        s = sigma / (alpha + sigma)
        z_fm = z / (alpha + sigma).view(-1, 1)
        return z_fm - s.view(-1, 1) * velocity(z_fm, s)

    return model_fn


def official_training_losses(x, eps, i, num_steps, student_fn, teacher_fn, weight_type):
    # google-research diffusion_distillation/dpm.py:221-305 (training_losses, distillation branch)
    bc = lambda v: v.view(-1, *[1] * (x.ndim - 1))  # noqa: E731
    u = (i + 1).to(DT) / num_steps
    logsnr = logsnr_cosine(u)
    z = x * bc(torch.sigmoid(logsnr).sqrt()) + bc(torch.sigmoid(-logsnr).sqrt()) * eps

    def run(fn, z_, logsnr_):  # _run_model (dpm.py:135-170), mean_type 'x', no clipping
        model_x = fn(z_, logsnr_)
        model_eps = (1 + torch.exp(logsnr_)).sqrt().view(-1, 1) * (
            z_ - model_x * torch.rsqrt(1 + torch.exp(-logsnr_)).view(-1, 1)
        )
        return model_x, model_eps

    x_pred, eps_pred = run(teacher_fn, z, logsnr)
    logsnr_mid = logsnr_cosine(u - 0.5 / num_steps)
    z_mid = bc(torch.sigmoid(logsnr_mid).sqrt()) * x_pred + bc(torch.sigmoid(-logsnr_mid).sqrt()) * eps_pred
    x_pred, eps_pred = run(teacher_fn, z_mid, logsnr_mid)
    logsnr_s = logsnr_cosine(u - 1.0 / num_steps)
    a_s, stdv_s = bc(torch.sigmoid(logsnr_s).sqrt()), bc(torch.sigmoid(-logsnr_s).sqrt())
    z_teacher = a_s * x_pred + stdv_s * eps_pred
    a_t = bc(torch.sigmoid(logsnr).sqrt())
    stdv_frac = bc(torch.exp(0.5 * (nn.functional.softplus(logsnr) - nn.functional.softplus(logsnr_s))))
    x_target = (z_teacher - stdv_frac * z) / (a_s - stdv_frac * a_t)
    x_target = torch.where(bc(i == 0), x_pred, x_target)
    eps_target = (1 + torch.exp(logsnr)).sqrt().view(-1, 1) * (
        z - x_target * torch.rsqrt(1 + torch.exp(-logsnr)).view(-1, 1)
    )
    model_x, model_eps = run(student_fn, z, logsnr)
    x_mse = (model_x - x_target).pow(2).flatten(1).mean(1)
    eps_mse = (model_eps - eps_target).pow(2).flatten(1).mean(1)
    if weight_type == "snr_trunc":  # x_mse * max(SNR, 1)
        return torch.maximum(x_mse, eps_mse)
    v_target = bc(a_t.flatten()) * eps_target - bc(torch.sigmoid(-logsnr).sqrt()) * x_target  # 'v_mse'
    model_v = a_t * model_eps - bc(torch.sigmoid(-logsnr).sqrt()) * model_x
    return (model_v - v_target).pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("weighting, official_weight", [("snr_trunc", "snr_trunc"), ("snr_plus_one", "v_mse")])
def test_pd_loss_and_gradient_equal_dpm_training_losses(weighting, official_weight):
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((3,), width=16, depth=1)).to(DT)
    teacher = CurvedTeacher()
    method = ProgressiveDistillation(start_steps=8, final_steps=1, steps_per_round=10, weighting=weighting)
    n = method.student_steps()  # round 0: a 4-step student of the 8-step teacher
    x0 = torch.randn(64, 3, dtype=DT)
    torch.manual_seed(3)
    ours = method.loss("student", x0, teacher, student, step=0)["loss"]
    torch.manual_seed(3)  # the project's draws: step index (0 = noisiest), then the noise
    i = torch.randint(0, n, (64,))
    eps = torch.randn_like(x0)
    assert {0, n - 1} <= set(i.tolist())  # the last-step rule (official i == 0) is exercised
    # dpm.py counts steps from the data end (u = (i + 1) / N): the project's index i is N - 1 - i there
    # and its FM state (1 - s) x + s eps is the VP state z / (alpha + sigma)
    official = official_training_losses(x0, eps, n - 1 - i, n, x_model(student), x_model(teacher), official_weight)
    # the VP objective and the FM one weigh the same x error; the VP state is (alpha + sigma) times the FM
    # one, and x is the same in both, so the losses agree without rescaling
    torch.testing.assert_close(ours, official.mean(), rtol=1e-9, atol=0)
    g_ours = torch.autograd.grad(ours, list(student.parameters()))
    g_official = torch.autograd.grad(
        official_training_losses(x0, eps, n - 1 - i, n, x_model(student), x_model(teacher), official_weight).mean(),
        list(student.parameters()),
    )
    for a, b in zip(g_ours, g_official, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_step_index_law_is_uniform_over_the_student_steps():
    # dpm.py:228-231: i ~ randint(0, num_steps), u = (i + 1) / num_steps
    method = ProgressiveDistillation(start_steps=8, final_steps=1, steps_per_round=10)
    seen = []
    teacher = CurvedTeacher()

    def student(z, s):
        seen.append(s.detach().clone())
        return torch.zeros_like(z)

    torch.manual_seed(0)
    method.loss("student", torch.zeros(4000, 1, dtype=DT), teacher, student, step=0)
    grid = method.round_grid(4)[::2][:4]  # the 4 student step starts
    counts = torch.stack([(seen[0] == t).sum() for t in grid.to(DT)])
    assert int(counts.sum()) == 4000
    assert (counts - 1000).abs().max() < 120  # 4 sigma of a binomial(4000, 1/4)
