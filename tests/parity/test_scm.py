"""Parity: sCD and sCT (``distill.methods.SCM``) against NVlabs/FastGen's sCM loss, restated here.

The restatement follows ``fastgen/methods/consistency_model/sCM.py`` (NVlabs/FastGen @ 34f30e8):
the TrigFlow wrapper of a network by SNR matching (``:35-80``), the tangent by one JVP along
``(cos t sin t dx_t/dt, cos t sin t)`` (``:142-181``), and the loss (``:240-287``) with FastGen's
options ``g_norm_spatial_invariance=False`` and ``divide_x_0_spatial_dim=False``: the full L2 norm
of rCM (``NVlabs/rcm rcm/models/t2v_model_distill_rcm.py:571``) and a per-dimension mean, the
project's conventions. FastGen's ``logvar`` is ``-w``, the project's adaptive weight network read
at the same times. Everything is float64 on fixed tiny inputs.
"""

import math

import pytest
import torch
from torch import nn

from distill.methods.scm import SCM
from tests.parity.nets import Velocity

SD = 0.5
P_MEAN, P_STD = -1.0, 1.4


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


def fastgen_scm_loss(student, teacher, x0, logvar_fn, r, prior_weighting, use_cd, seed, finish=None):
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
    weight = 1.0 / sigma_t if prior_weighting else 1.0  # sCM.py:278
    logvar = logvar_fn(t_hat)
    if finish is not None:
        return finish(g, lambda g_: torch.mean((F_theta - F_ - g_) ** 2, dim=1), weight, logvar)
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + 0.1)  # spatial invariance off
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
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-9)  # the loss leaves as float32
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fastgen_default_rms_normalisation_is_tangent_norm_0_1_sqrt_d():
    """FastGen's defaults g_norm_spatial_invariance and divide_x_0_spatial_dim (config_scm.py:57-59,
    sCM.py:272-285): g / (RMS(g) + 0.1) and a loss divided by D equal tangent_norm = 0.1 sqrt(D)."""
    dim, n = 4, 6
    teacher, student = Velocity(dim, seed=1), Velocity(dim, seed=2)
    x0 = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    method = SCM(
        tangent="teacher",
        sigma_data=SD,
        p_mean=P_MEAN,
        p_std=P_STD,
        tangent_warmup=0,
        jvp="exact",
        tangent_norm=0.1 * dim**0.5,
        prior_weighting=True,
    ).double()
    torch.manual_seed(0)
    ours = method.loss("student", x0, teacher, student, 0)["loss"]

    def fastgen_default(g, unweighted_of, weight, logvar):  # sCM.py:272-285 with both options on
        g_norm = torch.linalg.vector_norm(g, dim=1, keepdim=True) * math.sqrt(1 / dim)
        g = g / (g_norm + 0.1)
        return weight / (torch.exp(logvar) * dim) * unweighted_of(g) + logvar

    theirs = fastgen_scm_loss(
        student,
        teacher,
        x0,
        lambda t: -method.weighting(t).double(),
        1.0,
        True,
        True,
        0,
        finish=fastgen_default,
    ).mean()
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-9)


def test_time_law_is_scms_log_normal_sigma():
    """ln(sigma_d tan t) ~ N(P_mean, P_std^2): rCM's ``LogNormal`` (rcm/utils/timestep_utils.py:47-61,
    at sigma_d = 1) and FastGen's ``t_hat = atan2(sigma, sigma_d)`` (sCM.py:203), drawn in float64."""
    from distill.core.trigflow import sample_trig_time

    torch.manual_seed(0)
    ours = sample_trig_time(1000, P_MEAN, P_STD, SD)
    torch.manual_seed(0)
    sigma = torch.exp(torch.randn(1000, dtype=torch.float64) * P_STD + P_MEAN)
    torch.testing.assert_close(ours, torch.atan2(sigma, torch.full_like(sigma, SD)), rtol=1e-12, atol=1e-12)


def compose_experiment(name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    conf = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}"])


@pytest.mark.parametrize(
    ("name", "side", "fastgen"),
    [
        # config_scm.py + EDM/config_sct_cifar10.py: RAdam (0.9, 0.99) wd 0, grad_norm 1e6, fp32, 350k x 512
        (
            "paper_scm_cifar10",
            32,
            dict(p=(-1.0, 1.4), sigma=0.821, clip=0, lr=1e-4, steps=350000, batch=512),
        ),
        # EDM/config_scd_in64.py: Adam 7e-5 (0.9, 0.99) eps 1e-11, clip 10, inverse sqrt 35k, 600k x 1024
        (
            "paper_scm_imagenet64",
            64,
            dict(p=(-1.0, 1.6), sigma=1.1, clip=10, lr=7e-5, steps=600000, batch=1024),
        ),
    ],
)
def test_paper_configs_are_fastgens(name, side, fastgen):
    cfg = compose_experiment(name)
    obj = cfg.method.objective
    assert (obj.p_mean, obj.p_std) == fastgen["p"] and obj.sigma_data == 0.5
    assert obj.tangent_warmup == 10000 and obj.prior_weighting and obj.adaptive_weighting
    assert obj.tangent_norm == pytest.approx(0.1 * math.sqrt(3 * side * side), rel=1e-6)  # RMS norm + 0.1
    assert obj.t_mid == pytest.approx(math.atan(fastgen["sigma"] / 0.5), abs=1e-6)  # recommended 2-step sigma
    assert list(cfg.method.optimizer.betas) == [0.9, 0.99] and cfg.method.optimizer.lr == fastgen["lr"]
    assert cfg.method.grad_clip == fastgen["clip"]
    assert list(cfg.method.ema_decays) == [0.9999, 0.99995, 0.9996]  # EMA_CONST_CALLBACKS
    assert cfg.train.max_steps == fastgen["steps"] and cfg.train.global_batch_size == fastgen["batch"]
    if side == 32:
        assert cfg.method.optimizer._target_ == "torch.optim.RAdam" and cfg.hardware.precision == "32-true"
    else:
        assert cfg.method.optimizer.eps == 1e-11
        assert (cfg.train.lr_schedule, cfg.train.lr_decay_steps) == ("inverse_sqrt", 35000)
