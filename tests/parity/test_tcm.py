"""TCM parity: the loss and its gradient against a float64 restatement of NVlabs/FastGen's ``TCMModel``.

From NVlabs/FastGen @ 34f30e8: ``fastgen/methods/consistency_model/TCM.py`` (``TCMPrecond.forward``,
``TCMModel.single_train_step``: the boundary mask, ``t = transition_t + 1e-8`` on it, the two means and
``w_boundary``), ``fastgen/methods/consistency_model/CM.py`` (``t_to_r_sigmoid``, ``_compute_cm_loss``
for consistency training: one eps, the forked RNG around ``D_yt``, the ``r > 0`` mask; ``_pred_to_loss``:
pseudo-Huber with an absolute constant, ``weighting_ct_loss: default``), the EDM forward process
``x + t eps`` and ``EDMNoiseSchedule._truncated_log_t_sample`` (``fastgen/networks/noise_schedule.py``).
Defaults from ``fastgen/configs/methods/config_tcm.py`` and the CT schedule's ``ratio_limit``.

Both sides get the same times and boundary rows (FastGen draws them with numpy; the project with
torch) and the same eps and dropout masks (seeded torch draws in FastGen's order).
"""

import math

import pytest
import torch
from scipy import stats

import distill.methods.tcm as tcm_module
from distill.core.time_sampling import sample_truncated_log_t
from distill.methods import TruncatedConsistency
from distill.methods.tcm import boundary_rows
from tests.parity.test_ect import FMVelocity, denoiser

F64 = torch.float64
TRANSITION, RATIO, W_BOUNDARY = 1.0, 0.999, 0.1  # config_tcm.py transition_t, ct_schedule.ratio_limit, w_boundary


def t_to_r_sigmoid(t, ratio, min_r=0.002):  # CM.py, min_r = max(noise_scheduler.min_t, sample_t_cfg.min_r)
    r = t - t * (1 - ratio) * (1 + 8 * torch.sigmoid(-t))
    return torch.clamp(r, min=min_r)


def tcm_precond(w_stage1, w_student, x, t, dropout):  # TCM.py TCMPrecond.forward
    second_stage_mask = t >= TRANSITION
    if second_stage_mask.all():
        return denoiser(w_student, x, t, dropout)
    state = torch.get_rng_state()  # torch.random.fork_rng
    with torch.no_grad():
        out_t = denoiser(w_stage1, x, t, dropout)
    torch.set_rng_state(state)
    if second_stage_mask.any():
        out_s = denoiser(w_student, x, t, dropout)
        out_t[second_stage_mask] = out_s[second_stage_mask]
    return out_t


def fastgen_tcm_loss(x0, t, mask_t, w_stage1, w_student, huber_const, seed, dropout):
    """``TCMModel.single_train_step`` after its time draws, with ``CMModel._compute_cm_loss``."""
    t = t.clone()
    t[mask_t] = TRANSITION + 1e-8
    r = t_to_r_sigmoid(t, RATIO)
    torch.manual_seed(seed)
    eps = torch.randn_like(x0)  # shared noise direction
    y_t, y_r = x0 + t[:, None] * eps, x0 + r[:, None] * eps  # EDM forward_process
    state = torch.get_rng_state()  # fork_rng around D_yt: the same dropout masks for D_yr
    d_yt = tcm_precond(w_stage1, w_student, y_t, t, dropout)
    torch.set_rng_state(state)
    with torch.no_grad():
        d_yr_candidate = tcm_precond(w_stage1, w_student, y_r, r, dropout)
    mask = (r > 0)[:, None]
    d_yr = mask * torch.nan_to_num(d_yr_candidate) + (~mask) * x0
    l2_distance = torch.linalg.vector_norm(d_yt - d_yr, dim=1)  # _pred_to_loss
    loss_unweighted = torch.sqrt(l2_distance**2 + huber_const**2) - huber_const
    cm_loss = loss_unweighted / (t - r)  # weighting "default"
    return cm_loss[~mask_t].mean() + W_BOUNDARY * cm_loss[mask_t].mean(), r


@pytest.mark.parametrize("huber_const", [1e-8, 0.06])  # config_cm's 1e-8 (TCM CIFAR-10), EDM2 TCM's 0.06
def test_tcm_loss_and_gradient_equal_fastgens(monkeypatch, huber_const):
    torch.manual_seed(0)
    dim = 6
    x0 = torch.randn(12, dim, dtype=F64)
    w_student, w_stage1 = 0.5 * torch.randn(dim, dim, dtype=F64), 0.5 * torch.randn(dim, dim, dtype=F64)
    # Rows with r below the transition (stage-1 targets), above it (the student's), and boundary rows.
    t = torch.tensor([1.0, 1.001, 1.002, 1.0, 1.2, 1.5, 2.0, 3.0, 1.0, 10.0, 40.0, 80.0], dtype=F64)
    mask_t = torch.zeros(12, dtype=torch.bool)
    mask_t[[0, 3, 8]] = True  # int(12 * 0.25) rows
    monkeypatch.setattr(tcm_module, "sample_truncated_log_t", lambda n, *args, **kwargs: t.clone())
    monkeypatch.setattr(tcm_module, "boundary_rows", lambda n, prob: mask_t.clone())

    method = TruncatedConsistency(huber_c=huber_const / math.sqrt(dim))
    student = FMVelocity(w_student, dropout=True)
    method.attach(None, student)
    method.stage1 = FMVelocity(w_stage1, dropout=True).requires_grad_(False)
    torch.manual_seed(3)
    ours = method.loss("student", x0, None, student, step=0)["loss"]
    ours.backward()

    w = w_student.clone().requires_grad_(True)
    theirs, r = fastgen_tcm_loss(x0, t, mask_t, w_stage1, w, huber_const, seed=3, dropout=True)
    (grad,) = torch.autograd.grad(theirs, w)
    below = (r < TRANSITION) & ~mask_t
    assert bool(below.any()) and bool((r >= TRANSITION).any()), "both stages must give targets"
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(student.weight.grad, grad, rtol=1e-9, atol=1e-12)


def test_tcm_target_below_the_transition_is_the_frozen_stage1_models():
    """With the stage-1 model replaced, only the loss of rows whose r lies below the transition moves."""
    torch.manual_seed(0)
    dim = 4
    x0 = torch.randn(256, dim, dtype=F64)
    method = TruncatedConsistency()
    student = FMVelocity(0.5 * torch.randn(dim, dim, dtype=F64), dropout=False)
    method.attach(None, student)
    torch.manual_seed(1)
    same = method.loss("student", x0, None, student, 0)
    method.stage1 = FMVelocity(torch.zeros(dim, dim, dtype=F64), dropout=False).requires_grad_(False)
    torch.manual_seed(1)
    other = method.loss("student", x0, None, student, 0)
    assert not torch.isclose(same["boundary"], other["boundary"])  # every boundary row's r is below


def official_truncated_log_t(u01, mean, std, min_t, max_t, df):
    """``EDMNoiseSchedule._truncated_log_t_sample`` given the uniform draws on [0, 1)."""
    lower_adjusted = (math.log(min_t) - mean) / std
    upper_adjusted = (math.log(max_t) - mean) / std
    a, b = stats.t.cdf(lower_adjusted, df), stats.t.cdf(upper_adjusted, df)
    u = a + (b - a) * u01  # np.random.uniform(a, b, n)
    return torch.from_numpy(stats.t.ppf(u, df) * std + mean).exp()


def test_truncated_log_t_times_equal_fastgens_for_the_same_uniform_draws():
    ours = sample_truncated_log_t(4096, 1.0, 80.0, 0.0, 0.2, 0.01, generator=torch.Generator().manual_seed(5))
    u01 = torch.rand(4096, generator=torch.Generator().manual_seed(5), dtype=F64).numpy()
    theirs = official_truncated_log_t(u01, 0.0, 0.2, 1.0, 80.0, 0.01).clamp(1.0, 80.0)  # sample_t's safe_clamp
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    assert float(ours.min()) >= 1.0 and float(ours.max()) <= 80.0


def test_boundary_rows_are_fastgens_count():
    assert int(boundary_rows(128, 0.25).sum()) == 32  # int(B * boundary_prob), chosen by randperm
    assert int(boundary_rows(7, 0.25).sum()) == 1
    draws = torch.stack([boundary_rows(3, 0.25, torch.Generator().manual_seed(i)) for i in range(2000)])
    assert abs(float(draws.double().mean()) - 0.25) < 0.02  # batch 3: a Bernoulli(0.25) draw per row
