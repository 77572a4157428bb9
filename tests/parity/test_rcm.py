"""Parity: rCM (``conf/method/rcm.yaml``: ``WeightedSum`` of sCD and DMD2) against NVlabs/rcm, restated here.

From ``rcm/models/t2v_model_distill_rcm.py`` (NVlabs/rcm @ 5b41aa9): the student's sCM step
(``:508-574``, no adaptive weight, ``loss_scale = 100`` on a sum over dimensions), the DMD step's
normalised gradient and loss (``:662-670``, ``loss_scale_dmd = 1``), and the schedule
(``is_student_phase`` ``:294-299``, ``emit_dmd`` ``:707-718``). The network read as TrigFlow's F is
``RectifiedFlow_TrigFlowWrapper`` (``rcm/utils/denoiser_scaling.py:19-30``) with ``denoise`` (``:405-420``).
Float64, fixed tiny inputs.
"""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from distill.core.dmd import dm_gradient, dm_loss
from distill.methods import DMD2, SCM, WeightedSum
from tests.parity.nets import Velocity

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
LOSS_SCALE, LOSS_SCALE_DMD = 100.0, 1.0


def rcm_F(net: nn.Module, xt: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """rCM ``denoise(...).F`` for a rectified-flow net (denoiser_scaling.py:24-30, model :405-420)."""
    c, s = torch.cos(time)[:, None], torch.sin(time)[:, None]
    c_skip, c_out, c_in = 1 / (c + s), -s / (c + s), 1 / (c + s)
    c_noise = (s / (c + s))[:, 0]
    x0 = c_skip * xt + c_out * net(xt * c_in, c_noise)
    return (c * xt - x0) / s


def rcm_scm_loss(student, teacher, x0, seed):
    """rCM ``_student_scm_step`` after the tangent warm-up (warmup_ratio = 1), per-sample (B,)."""
    torch.manual_seed(seed)
    # draw_training_time_G: LogNormal(-0.8, 1.6) sigma, trig time atan(sigma) (timestep_utils.py:47-61);
    # rCM draws the normal in float32, here in float64.
    time = torch.atan(torch.exp(torch.randn(x0.shape[0], dtype=torch.float64) * 1.6 - 0.8))
    eps = torch.randn_like(x0)
    c, s = torch.cos(time)[:, None], torch.sin(time)[:, None]
    xt = x0 * c + eps * s  # :517
    with torch.no_grad():
        F_teacher = rcm_F(teacher, xt, time)  # :519
        t_xt, t_time = c * s * F_teacher, (c * s)[:, 0]  # :525-526
        t_F = torch.func.jvp(lambda x, t: rcm_F(student, x, t), (xt, time), (t_xt, t_time))[1]  # :543
    F_theta = rcm_F(student, xt, time)  # :545
    F_sg = F_theta.clone().detach()  # :546
    ratio = 1.0
    g = -c * torch.sqrt(1 - ratio**2 * s**2) * (F_sg - F_teacher) - (ratio * c * s * xt + t_F)  # :550-552
    g = g / (g.norm(p=2, dim=1, keepdim=True) + 0.1)  # :571
    return LOSS_SCALE * ((F_theta - F_sg - g) ** 2).sum(dim=1)  # :573-574


def test_scm_term_without_adaptive_weight_is_rcms_over_100_d():
    dim, n = 3, 6
    teacher, student = Velocity(dim, seed=1), Velocity(dim, seed=2)
    x0 = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    scm = SCM(
        tangent="teacher",
        sigma_data=1.0,
        p_mean=-0.8,
        p_std=1.6,
        tangent_warmup=10,
        jvp="exact",
        adaptive_weighting=False,
    ).double()
    torch.manual_seed(0)
    ours = scm.loss("student", x0, teacher, student, step=10)["loss"]
    grads = torch.autograd.grad(ours, list(student.parameters()))
    theirs = rcm_scm_loss(student, teacher, x0, seed=0).mean()
    expected = torch.autograd.grad(theirs, list(student.parameters()))
    torch.testing.assert_close(LOSS_SCALE * dim * ours.double(), theirs, rtol=1e-6, atol=1e-9)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(LOSS_SCALE * dim * a, b, rtol=1e-9, atol=1e-12)


def test_weights_1_to_0_02_are_rcms_100_to_1_balance():
    """rCM's student loss 100 sum_d sCM + 1 sum_d DMD equals 100 D (1 L_sCM + 0.02 L_DMD) in our means."""
    torch.manual_seed(0)
    n, dim = 4, 5
    x_hat = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    mu_real, mu_fake = (
        torch.randn(n, dim, dtype=torch.float64),
        torch.randn(n, dim, dtype=torch.float64),
    )
    scm_residual = torch.randn(n, dim, dtype=torch.float64)  # F - F^- - g of the sCM term
    # rCM :662-670: grad = (x0_fake - x0_teacher) / mean|G_x0 - x0_teacher|, loss = sum (x - sg(x - grad))^2
    with torch.no_grad():
        weight_factor = (x_hat - mu_real).abs().mean(dim=1, keepdim=True).clip(min=1e-5)
        grad = (mu_fake - mu_real) / weight_factor
    rcm_total = (
        LOSS_SCALE * (scm_residual**2).sum(1) + LOSS_SCALE_DMD * ((x_hat - (x_hat - grad).detach()) ** 2).sum(1)
    ).mean()

    weights = compose_rcm().method.objective.weights
    ours = weights.scm * (scm_residual**2).mean() + weights.dmd * dm_loss(x_hat, dm_gradient(x_hat, mu_real, mu_fake))
    torch.testing.assert_close(LOSS_SCALE * dim * ours, rcm_total)
    g_ours, g_rcm = (torch.autograd.grad(v, x_hat)[0] for v in (LOSS_SCALE * dim * ours, rcm_total))
    torch.testing.assert_close(g_ours, g_rcm)


def compose_rcm(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["method=rcm", *overrides])


def test_schedule_is_rcms_student_phases_and_dmd_emission():
    """The student steps exactly on rCM's student iterations and DMD joins exactly when rCM emits it.

    rCM runs one critic update on each other iteration (4 per 5); here the fake score steps on every
    batch (5 per 5), DMD2's ratio: a difference the config headers list.
    """
    warmup, freq = 10, 5
    cfg = compose_rcm([f"method.objective.terms.scm.tangent_warmup={warmup}"])
    method = instantiate(cfg.method.objective)
    assert isinstance(method, WeightedSum) and isinstance(method.terms["dmd"], DMD2)
    assert not method.terms["scm"].adaptive_weighting
    method.set_budget(100)

    def is_student_phase(it):  # :294-299
        return it < warmup or (it - warmup) % freq == 0

    for it in range(40):
        phases = tuple(method.phases(it))
        assert ("student" in phases) == is_student_phase(it), it
        emit_dmd = is_student_phase(it) and it >= warmup  # :709
        dmd_in_student_loss = "student" in phases and not it < method._warmup_length()  # WeightedSum.loss
        assert dmd_in_student_loss == emit_dmd, it


def test_sampling_times_are_rcms_mid_t():
    """rCM samples from atan(sigma_max) through ``backward_timesteps[: num_steps - 1]`` = [1.5, 1.4, 1.0]
    (:768-772; inference/wan2pt1_t2v_rcm_infer.py:145), at sigma_d = 1 in the T2I config."""
    cfg = compose_rcm()
    scm = instantiate(cfg.method.objective.terms.scm)
    for nfe in (1, 2, 3, 4):
        mids = [1.5, 1.4, 1.0][: nfe - 1]
        expected = torch.tensor([math.atan(80.0 / scm.sigma_data), *mids, 0.0], dtype=torch.float64)
        torch.testing.assert_close(scm.trig_sample_times(nfe), expected)
    # the DMD term's generator times are the same times in FM coordinates (rcm.yaml: sigma_d 0.5)
    fm = scm.sample_times(4)[:-1].tolist()
    assert cfg.method.objective.terms.dmd.generator_times == pytest.approx(fm, abs=1e-5)


def test_fake_score_learns_rcms_critic_loss():
    """rCM's critic: x0-MSE / sin^2 t at sigma_d = 1 (t2v_model_distill_rcm.py:686-693), which is the
    DMD term's ``edm`` weighting at sigma_data 1 (tests/methods/test_dmd.py checks that equality)."""
    dmd = instantiate(compose_rcm().method.objective.terms.dmd)
    assert (dmd.fake_score_weighting, dmd.sigma_data) == ("edm", 1.0)
