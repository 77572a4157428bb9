"""f-distill parity: the density ratio, its noise-level bins, the f-divergence weights and the
weighted distribution-matching loss, against float64 restatements of NVlabs/FastGen
(fastgen/methods/distribution_matching/f_distill.py:19-28, 56-105, 150-154;
fastgen/methods/common_loss.py variational_score_distillation_loss), on one rank, with the noise
levels in FM time [0, 1] (FastGen's flow networks: min_t 0, max_t 1).
"""

import pytest
import torch
import torch.nn.functional as F

from distill.core.f_divergence import F_WEIGHTINGS
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.methods import DMD2
from tests.parity.nets import Velocity

DT = torch.float64

# f_distill.py:19-28 (rkl returns a 0-d tensor there, which its normalisation cannot take: see rkl below)
OFFICIAL_WEIGHTS = {
    "kl": lambda r: r,
    "js": lambda r: 1 - 1 / (1 + r),
    "sf": lambda r: 1 / (1 + r),
    "neyman": lambda r: 1 / torch.clamp(r, min=1e-8),
    "sh": lambda r: r**0.5,
    "jf": lambda r: 1 + r,
}


def official_h(fake_logits, t, f_div, lower, upper, bins, ema_rate, min_t=0.0, max_t=1.0):
    # f_distill.py:56-105 (_get_f_div_weighting_h), world size 1; ``bins`` is updated in place
    ratio = torch.exp(torch.clamp(fake_logits.mean(dim=1), min=-10.0, max=10.0))
    ratio = torch.clamp(ratio, lower, upper)
    if bins is not None:
        bin_num = len(bins)
        bin_width = (max_t - min_t) / bin_num
        idx = ((t.double() - min_t) / bin_width).floor().long().clamp(0, bin_num - 1)
        cnt = torch.bincount(idx, minlength=bin_num).double()
        ratio_sum = torch.bincount(idx, weights=ratio, minlength=bin_num).double()
        valid = cnt > 0
        new_vals = ratio_sum / (cnt + 1e-6)
        bins[valid] = bins[valid] * ema_rate + (1 - ema_rate) * new_vals[valid]
        ratio = ratio / (bins[idx] + 1e-6)
    h = OFFICIAL_WEIGHTS[f_div](ratio)
    return h / (h.sum() / len(h) + 1e-6)


def official_vsd_loss(gen_data, teacher_x0, fake_score_x0, additional_scale):
    # common_loss.py variational_score_distillation_loss
    dims = tuple(range(1, teacher_x0.ndim))
    with torch.no_grad():
        diff_abs_mean = (gen_data - teacher_x0).abs().mean(dim=dims, keepdim=True)
        w = 1 / (diff_abs_mean + 1e-6)
        w = w * additional_scale.reshape(-1, *([1] * (w.ndim - 1)))
        vsd_grad = (fake_score_x0 - teacher_x0) * w
        pseudo_target = gen_data - vsd_grad
    return 0.5 * F.mse_loss(gen_data, pseudo_target, reduction="mean")


def inputs(seed: int, n: int = 12):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 4, generator=gen, dtype=DT)  # 4 logits per sample (FastGen: one per head)
    logits[0] = 30.0  # beyond the +-10 logit clamp
    s = torch.rand(n, generator=gen, dtype=DT)
    return logits, s


@pytest.mark.parametrize("f_div", sorted(OFFICIAL_WEIGHTS))
@pytest.mark.parametrize("bins", [0, 10])
def test_weights_are_fastgens_over_successive_batches(f_div, bins):
    method = DMD2(gan_weight=3e-3, f_divergence=f_div, ratio_bins=bins, ratio_ema_rate=0.5)
    method.ratio_bin_means = method.ratio_bin_means.double()
    official_bins = torch.ones(bins, dtype=DT) if bins else None
    for seed in range(3):  # the bins' running means carry over from batch to batch
        logits, s = inputs(seed)
        ours = method.f_scale([logits], s)
        official = official_h(logits, s, f_div, 0.1, 20.0, official_bins, 0.5)
        torch.testing.assert_close(ours.double(), official, rtol=1e-5, atol=1e-9)  # float32 ratios
        if bins:
            torch.testing.assert_close(method.ratio_bin_means, official_bins, rtol=1e-6, atol=0)  # float32 as FastGen


def test_weighted_dm_loss_and_gradient_are_fastgens_vsd_loss():
    teacher, fake = Velocity(2, seed=0), Velocity(2, seed=1)
    method = DMD2(gan_weight=3e-3, f_divergence="js")
    method.fake_score = fake
    torch.manual_seed(0)
    x = torch.randn(6, 2, dtype=DT)
    s, eps = torch.rand(6, dtype=DT) * 0.9 + 0.05, torch.randn(6, 2, dtype=DT)
    logits, _ = inputs(1, 6)
    h = method.f_scale([logits], s).double()

    x_ours = x.clone().requires_grad_(True)
    ours = method.dm_term(x_ours, teacher, s, eps, h)
    ours.backward()
    x_off = x.clone().requires_grad_(True)
    x_s = fm_noise(x, eps, s)
    with torch.no_grad():
        teacher_x0, fake_x0 = velocity_to_x0(x_s, s, teacher(x_s, s)), velocity_to_x0(x_s, s, fake(x_s, s))
    official = official_vsd_loss(x_off, teacher_x0, fake_x0, h)
    official.backward()
    assert official > 0
    torch.testing.assert_close(ours, official, rtol=1e-4, atol=0)  # FastGen adds 1e-6 to the normaliser
    torch.testing.assert_close(x_ours.grad, x_off.grad, rtol=1e-4, atol=1e-12)


def test_reverse_kl_is_dmd2():
    """f_divergence=rkl is DMD2's generator loss to the bit: no weight, and the GAN on its own draw."""
    teacher = Velocity(2, seed=0)
    losses = []
    for method in (DMD2(gan_weight=0.0), DMD2(gan_weight=0.0, f_divergence="rkl")):
        student = Velocity(2, seed=3)
        method.attach(teacher, student)
        method.fake_score.load_state_dict(Velocity(2, seed=1).state_dict())
        torch.manual_seed(5)
        losses.append(method.loss("student", torch.randn(8, 2, dtype=DT), teacher, student, 0)["loss"])
    assert losses[0].item() == losses[1].item()
    assert torch.equal(F_WEIGHTINGS["rkl"](torch.rand(5)), torch.ones(5))
