"""EDM and EDM2 networks: shapes, preconditioning limits, forward-mode AD, magnitude preservation."""

from __future__ import annotations

import pytest
import torch

from distill.nets.edm import DhariwalUNet, EDMPrecond, SongUNet, VEPrecond, VPPrecond
from distill.nets.edm2 import EDM2Precond, EDM2UNet, MPConv, mp_cat, mp_silu, mp_sum
from tests.teachers.edm_pickles import TINY_DHARIWAL, TINY_EDM2, TINY_SONG, randomized

NCSNPP = dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1])


def song(**kw) -> SongUNet:
    spec = {k: v for k, v in TINY_SONG.items() if k != "model_type"}
    return SongUNet(img_resolution=8, in_channels=1, out_channels=1, **{**spec, **kw})


def dhariwal(**kw) -> DhariwalUNet:
    spec = {k: v for k, v in TINY_DHARIWAL.items() if k != "model_type"}
    return DhariwalUNet(img_resolution=8, in_channels=1, out_channels=1, **{**spec, **kw})


def edm2_unet(**kw) -> EDM2UNet:
    spec = {k: v for k, v in TINY_EDM2.items() if k != "logvar_channels"}
    return EDM2UNet(img_resolution=8, img_channels=1, **{**spec, **kw})


NETS = {
    "ddpm++": lambda: song(),
    "ncsn++": lambda: song(**NCSNPP),
    "song_skip": lambda: song(encoder_type="skip", decoder_type="skip"),
    "adm_cond": lambda: dhariwal(label_dim=3, model_channels=64),  # 64 channels: one attention head
    "edm2_cond": lambda: edm2_unet(label_dim=3),
}


@pytest.mark.parametrize("name", NETS)
def test_networks_keep_the_image_shape(name):
    torch.manual_seed(0)
    net = randomized(NETS[name]())
    labels = torch.eye(3)[[0, 2]] if "cond" in name else None
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([-1.0, 0.5]), labels)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NETS)
def test_jvp_through_the_networks_matches_a_finite_difference(name):
    torch.manual_seed(0)
    net = randomized(NETS[name]()).double()
    labels = torch.eye(3, dtype=torch.float64)[[0, 2]] if "cond" in name else None
    x, c_noise = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([-1.0, 0.5], dtype=torch.float64)
    dx, dc = torch.randn_like(x), torch.randn_like(c_noise)

    def f(x, c):
        return net(x, c, labels)

    _, tangent = torch.func.jvp(f, (x, c_noise), (dx, dc))
    h = 1e-6  # small: NCSN++ Fourier features oscillate fast in c_noise
    fd = (f(x + h * dx, c_noise + h * dc) - f(x - h * dx, c_noise - h * dc)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-6)


PRECONDS = {
    "edm": lambda: EDMPrecond(8, 1, model_type="SongUNet", **{k: v for k, v in TINY_SONG.items() if k != "model_type"}),
    "vp": lambda: VPPrecond(8, 1, **{k: v for k, v in TINY_SONG.items() if k != "model_type"}),
    "ve": lambda: VEPrecond(8, 1, **{k: v for k, v in TINY_SONG.items() if k != "model_type"}),
    "edm2": lambda: EDM2Precond(8, 1, 0, use_fp16=False, **TINY_EDM2),
}


@pytest.mark.parametrize("name", ["edm", "edm2"])
def test_edm_denoiser_returns_its_input_at_vanishing_noise(name):
    torch.manual_seed(0)
    net = randomized(PRECONDS[name]()).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x, torch.full((2,), 1e-9, dtype=torch.float64)), x, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", PRECONDS)
def test_preconditioners_denoise_in_float32_and_float64(name):
    torch.manual_seed(0)
    net = randomized(PRECONDS[name]())
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 5.0])
    out32 = net(x, sigma)
    out64 = net.double()(x.double(), sigma.double())
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)


def test_vp_preconditioner_inverts_its_noise_schedule():
    net = PRECONDS["vp"]()
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(net.sigma_inv(net.sigma(t)), t)
    assert net.sigma_min < net.sigma_max


def test_edm2_logvar_head_gives_one_value_per_sample():
    net = PRECONDS["edm2"]()
    denoised, logvar = net(torch.randn(3, 1, 8, 8), torch.ones(3), return_logvar=True)
    assert denoised.shape == (3, 1, 8, 8) and logvar.shape == (3, 1, 1, 1)


def test_mpconv_forces_unit_weights_in_training_without_changing_its_output():
    torch.manual_seed(0)
    conv = MPConv(4, 6, kernel=[3, 3])
    with torch.no_grad():
        conv.weight.mul_(7.0)
    x = torch.randn(2, 4, 5, 5)
    before = conv.eval()(x)
    after = conv.train()(x)
    rms = conv.weight.flatten(1).norm(dim=1) / (conv.weight[0].numel() ** 0.5)
    torch.testing.assert_close(rms, torch.ones(6), atol=1e-3, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_magnitude_preserving_ops_keep_unit_variance():
    torch.manual_seed(0)
    a, b = torch.randn(4, 64, 32, 32), torch.randn(4, 32, 32, 32)
    assert mp_sum(a, torch.randn_like(a), t=0.3).std() == pytest.approx(1.0, abs=0.02)
    assert mp_cat(a, b, t=0.7).std() == pytest.approx(1.0, abs=0.02)
    assert mp_silu(a).square().mean() == pytest.approx(1.0, abs=0.05)
