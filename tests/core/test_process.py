"""Noise processes: time maps, state maps and the DDPM schedule."""

import math

import pytest
import torch

from distill.core.process import (
    EDM,
    PROCESSES,
    FlowMatching,
    TrigFlow,
    VPCosine,
    VPDiscrete,
    make_process,
)

ALL = [
    FlowMatching(),
    EDM(),
    VPCosine(),
    VPDiscrete(),
    VPDiscrete(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    TrigFlow(),
]


def _native_times(p) -> torch.Tensor:
    if isinstance(p, EDM):  # geometric covers the whole sigma range
        return torch.logspace(math.log10(p.sigma_min), math.log10(p.sigma_max), 41).double()
    return torch.linspace(p.t_min, p.t_max, 41, dtype=torch.float64)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_fm_time_round_trip(p):
    t = _native_times(p)
    s = p.to_fm_time(t)
    assert torch.all(s[1:] > s[:-1]), "to_fm_time must be strictly increasing"
    assert torch.all((s >= 0) & (s <= 1))
    torch.testing.assert_close(p.from_fm_time(s), t, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_from_fm_time_clamps_and_is_finite(p):
    s = torch.tensor([0.0, 1e-12, 0.5, 1 - 1e-12, 1.0], dtype=torch.float64)
    t = p.from_fm_time(s)
    assert torch.isfinite(t).all()
    assert (t >= p.t_min).all() and (t <= p.t_max).all()
    assert t[0].item() == pytest.approx(p.t_min) and t[-1].item() == pytest.approx(p.t_max)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_fm_state_round_trip_and_definition(p):
    gen = torch.Generator().manual_seed(0)
    t = _native_times(p)[1:-1:5]
    x0 = torch.randn(len(t), 2, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), 2, 3, generator=gen, dtype=torch.float64)
    a, sg = p.alpha(t)[:, None, None], p.sigma(t)[:, None, None]
    x_t = a * x0 + sg * eps
    x_s = p.to_fm_state(x_t, t)
    s = p.to_fm_time(t)[:, None, None]
    # The FM state is the FM interpolation at the FM time.
    torch.testing.assert_close(x_s, (1 - s) * x0 + s * eps, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(p.from_fm_state(x_s, s[:, 0, 0]), x_t, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_edm_sigma_and_logsnr(p):
    t = _native_times(p)[1:-1]
    s = p.to_fm_time(t)
    torch.testing.assert_close(p.edm_sigma(t), s / (1 - s), rtol=1e-9, atol=0)
    torch.testing.assert_close(p.logsnr(t), -2 * torch.log(p.edm_sigma(t)), rtol=1e-9, atol=1e-9)


def test_returns_input_dtype():
    p = VPCosine()
    t = torch.tensor([0.1, 0.7], dtype=torch.float32)
    assert p.alpha(t).dtype == torch.float32 and p.from_fm_time(t).dtype == torch.float32
    assert p.alpha(0.3).dtype == torch.float64


def test_vp_cosine_logsnr_clip():
    p = VPCosine(logsnr_min=-20, logsnr_max=20)
    ends = p.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([20.0, -20.0], dtype=torch.float64))
    t = torch.tensor([0.3], dtype=torch.float64)
    torch.testing.assert_close(p.alpha(t), torch.cos(0.5 * math.pi * t))
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones(1, dtype=torch.float64))


def test_edm_pure_noise_clamped_to_sigma_max():
    p = EDM(sigma_max=80.0)
    assert p.from_fm_time(torch.ones(2, dtype=torch.float64)).tolist() == [80.0, 80.0]
    x = p.from_fm_state(torch.ones(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(x, torch.full((1, 2), 81.0, dtype=torch.float64))


def test_edm_clean_data_clamped_to_sigma_min():
    # EDM's networks are undefined at sigma = 0 (c_noise = ln(sigma) / 4): s = 0 must not reach it.
    p = EDM(sigma_min=0.002)
    assert p.from_fm_time(torch.zeros(2, dtype=torch.float64)).tolist() == [0.002, 0.002]
    assert p.t_min == 0.002


def test_trigflow_scales():
    p = TrigFlow(sigma_data=0.5)
    t = torch.tensor([0.0, 0.4, math.pi / 2], dtype=torch.float64)
    torch.testing.assert_close(p.alpha(t) ** 2 + (p.sigma(t) / 0.5) ** 2, torch.ones(3, dtype=torch.float64))
    # EDM sigma = sigma_d tan t (docs/methods.md 1.5).
    torch.testing.assert_close(p.edm_sigma(t[1:2]), 0.5 * torch.tan(t[1:2]))


@pytest.mark.parametrize("schedule, start, end", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)])
def test_vp_discrete_matches_diffusers(schedule, start, end):
    T = 1000
    # diffusers DDPMScheduler: betas, then alphas_cumprod = cumprod(1 - betas).
    if schedule == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    else:
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    p = VPDiscrete(T, start, end, schedule)
    idx = torch.tensor([0, 1, 250, 500, 998, 999], dtype=torch.float64)
    i = idx.long()
    torch.testing.assert_close(p.alpha(idx), ac[i].sqrt(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(p.sigma(idx), (1 - ac[i]).sqrt(), atol=1e-12, rtol=1e-10)
    # Integer timesteps round trip through FM time exactly.
    torch.testing.assert_close(p.from_fm_time(p.to_fm_time(idx)), idx, atol=1e-8, rtol=0)
    # Between integers log(sigma / alpha) is linear.
    mid = torch.tensor([250.5], dtype=torch.float64)
    expect = 0.5 * (torch.log(p.edm_sigma(idx[2:3])) + torch.log(p.edm_sigma(idx[2:3] + 1)))
    torch.testing.assert_close(torch.log(p.edm_sigma(mid)), expect)


def test_vp_discrete_accepts_integer_timesteps():
    p = VPDiscrete()
    out = p.alpha(torch.tensor([0, 999]))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_make_process():
    assert isinstance(make_process("edm", sigma_max=10.0), EDM)
    assert make_process("edm", sigma_max=10.0).t_max == 10.0
    for name, cls in PROCESSES.items():
        assert isinstance(make_process(name), cls)
    with pytest.raises(ValueError, match="vp_cosine"):
        make_process("ddpm")
    with pytest.raises(ValueError, match="beta_schedule"):
        VPDiscrete(beta_schedule="cosine")
