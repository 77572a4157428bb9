"""Parity: sCD and sCT (``distill.methods.SCM``) against NVlabs/FastGen's sCM loss, restated here.

The restatement follows ``fastgen/methods/consistency_model/sCM.py`` (NVlabs/FastGen @ 34f30e8):
the TrigFlow wrapper of a network by SNR matching (``:35-80``), the tangent by one JVP along
``(cos t sin t dx_t/dt, cos t sin t)`` (``:142-181``), and the loss (``:240-287``) with FastGen's
options ``g_norm_spatial_invariance=False`` and ``divide_x_0_spatial_dim=False``: the full L2 norm
of rCM (``NVlabs/rcm rcm/models/t2v_model_distill_rcm.py:571``) and a per-dimension mean, the
project's conventions. FastGen's ``logvar`` is ``-w``, the project's adaptive weight network read
at the same times. Everything is float64 on fixed tiny inputs.
"""

import pytest
import torch
from torch import nn

from distill.methods.scm import SCM

SD = 0.5
P_MEAN, P_STD = -1.0, 1.4


class Velocity(nn.Module):
    """A float64 FM velocity net ``v(x_s, s)`` with smooth time input."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(dim + 1, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x, s):
        return self.body(torch.cat([x, s[:, None].to(x.dtype)], dim=1))


def fastgen_trig_F(net: nn.Module, x_t_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
    """FastGen ``TrigFlowPrecond.forward`` (sCM.py:35-80) for an FM net (alpha = 1 - s, sigma = s).

    SNR matching: ``sqrt_snr = cos t / (sigma_d sin t) = (1 - s) / s``; ``x = x_hat * sqrt(alpha^2 +
    (sigma / sigma_d)^2)``; the net's x0 prediction ``x - s v``; TrigFlow's ``x0_to_flow``
    ``(cos t x_hat - x0) / sin t``, divided by sigma_d.
    """
    sqrt_snr = torch.cos(t_hat) / (SD * torch.sin(t_hat))
    s = 1 / (1 + sqrt_snr)
    coeff = ((1 - s) ** 2 + (s / SD) ** 2).sqrt()
    x = x_t_hat * coeff[:, None]
    x0 = x - s[:, None] * net(x, s)
    flow = (torch.cos(t_hat)[:, None] * x_t_hat - x0) / torch.sin(t_hat)[:, None]
    return flow / SD


def fastgen_scm_loss(student, teacher, x0, logvar_fn, r, prior_weighting, use_cd, seed):
    """FastGen's sCM training step (sCM.py:183-287), per-sample losses (B,)."""
    torch.manual_seed(seed)
    # The time law: ln sigma ~ N(P_mean, P_std^2), t_hat = atan2(sigma, sigma_d) (sCM.py:198-203; rCM
    # rcm/utils/timestep_utils.py LogNormal). FastGen truncates sigma to [0.002, 80] (noise_schedule.py
    # :819-843, mass 2e-4 here) and rCM draws in float32: here an untruncated float64 draw.
    sigma_t = torch.exp(P_MEAN + P_STD * torch.randn(x0.shape[0], dtype=torch.float64))
    t_hat = torch.atan2(sigma_t, torch.ones_like(sigma_t) * SD)
    z = torch.randn_like(x0) * SD  # sCM.py:206
    c, s = torch.cos(t_hat)[:, None], torch.sin(t_hat)[:, None]
    x_t_hat = c * x0 + s * z  # sCM.py:207
    if use_cd:
        with torch.no_grad():
            dxt_dt = SD * fastgen_trig_F(teacher, x_t_hat, t_hat)  # sCM.py:211
    else:
        dxt_dt = -s * x0 + c * z  # cond_velocity (sCM.py:220)
    F_theta = fastgen_trig_F(student, x_t_hat, t_hat)  # sCM.py:223
    v_t = torch.cos(t_hat) * torch.sin(t_hat)  # _compute_vt (sCM.py:142-148)
    with torch.no_grad():
        F_jvp = torch.func.jvp(
            lambda x, t: fastgen_trig_F(student, x, t),
            (x_t_hat, t_hat),
            (v_t[:, None] * dxt_dt, v_t),
        )[1]  # sCM.py:177-179
    # _scm_pred_to_loss (sCM.py:252-287)
    F_ = F_theta.detach()  # sCM.py:254
    g1 = -(c * c) * (SD * F_ - dxt_dt)
    g2 = -(c * s * x_t_hat + SD * F_jvp)
    g = g1 + r * g2
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + 0.1)  # spatial invariance off
    weight = 1.0 / sigma_t if prior_weighting else 1.0  # sCM.py:278
    logvar = logvar_fn(t_hat)
    unweighted = torch.mean((F_theta - F_ - g) ** 2, dim=1)
    return weight / torch.exp(logvar) * unweighted + logvar  # D = 1 (divide_x_0_spatial_dim off)


@pytest.mark.parametrize("tangent", ["teacher", "data"])
@pytest.mark.parametrize("prior_weighting", [False, True])
@pytest.mark.parametrize("step", [5, 40])  # tangent warm-up ratio r = 0.25 and 1
def test_scm_loss_and_gradient_equal_fastgens(tangent, prior_weighting, step):
    dim, n = 3, 6
    teacher, student = Velocity(dim, seed=1), Velocity(dim, seed=2)
    x0 = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    method = SCM(
        tangent=tangent,
        sigma_data=SD,
        p_mean=P_MEAN,
        p_std=P_STD,
        tangent_warmup=20,
        jvp="exact",
        prior_weighting=prior_weighting,
    ).double()
    with torch.no_grad():  # a non-trivial adaptive weight
        for p in method.weighting.parameters():
            p.normal_(0, 0.3)
    r = min(1.0, step / 20)

    torch.manual_seed(0)
    ours = method.loss("student", x0, teacher, student, step)["loss"]
    grads = torch.autograd.grad(ours, list(student.parameters()))

    theirs = fastgen_scm_loss(
        student,
        teacher,
        x0,
        lambda t: -method.weighting(t).double(),
        r,
        prior_weighting,
        use_cd=tangent == "teacher",
        seed=0,
    ).mean()
    expected = torch.autograd.grad(theirs, list(student.parameters()))
    torch.testing.assert_close(
        ours.double(), theirs, rtol=1e-6, atol=1e-9
    )  # the loss leaves as float32
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_time_law_is_scms_log_normal_sigma():
    """ln(sigma_d tan t) ~ N(P_mean, P_std^2): rCM's ``LogNormal`` (rcm/utils/timestep_utils.py:47-61,
    at sigma_d = 1) and FastGen's ``t_hat = atan2(sigma, sigma_d)`` (sCM.py:203), drawn in float64."""
    from distill.core.trigflow import sample_trig_time

    torch.manual_seed(0)
    ours = sample_trig_time(1000, P_MEAN, P_STD, SD)
    torch.manual_seed(0)
    sigma = torch.exp(torch.randn(1000, dtype=torch.float64) * P_STD + P_MEAN)
    torch.testing.assert_close(
        ours, torch.atan2(sigma, torch.full_like(sigma, SD)), rtol=1e-12, atol=1e-12
    )
