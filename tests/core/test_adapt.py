"""Adapters: every (process, prediction kind) teacher becomes the same exact FM velocity field."""

import pytest
import torch

from distill.core.adapt import from_velocity_model, to_velocity_model
from distill.core.gmm import ring_mixture
from distill.core.prediction import PREDICTION_KINDS, from_x0_eps
from distill.core.process import EDM, FlowMatching, TrigFlow, VPCosine, VPDiscrete
from distill.core.samplers import sample_euler, sample_heun

MIX = ring_mixture()
SD = 0.5  # sigma_data for the "trig" kind, deliberately not 1
PROCESSES = [FlowMatching(), EDM(), VPCosine(), VPDiscrete(), TrigFlow(sigma_data=SD)]


def exact_native(process, kind):
    """The Bayes-optimal predictor of ``kind`` in ``process``, from the mixture's posterior."""

    def native(x_t, t):
        alpha, sigma = process.alpha(t), process.sigma(t)
        x0, eps = MIX.posterior(x_t, alpha, sigma)
        return from_x0_eps(kind, x0, eps, alpha, sigma, SD)

    return native


def exact_velocity(x_s, s):
    x0, eps = MIX.posterior(x_s, 1 - s, s)
    return eps - x0


def _points(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    x0 = MIX.sample(n, gen)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return (1 - s[:, None]) * x0 + s[:, None] * eps, s


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_adapted_native_is_exact_velocity(process, kind):
    x_s, s = _points()
    model = to_velocity_model(exact_native(process, kind), process, kind, SD)
    torch.testing.assert_close(model(x_s, s), exact_velocity(x_s, s), atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_from_velocity_model_inverts(process, kind):
    x_s, s = _points(seed=1)
    t = process.from_fm_time(s)
    x_t = process.from_fm_state(x_s, s)
    native = from_velocity_model(exact_velocity, process, kind, SD)
    torch.testing.assert_close(native(x_t, t), exact_native(process, kind)(x_t, t), atol=1e-8, rtol=0)


def test_adapter_keeps_dtype_and_feeds_native_in_working_precision():
    seen = {}

    def native(x_t, t):
        seen["x"], seen["t"] = x_t.dtype, t.dtype
        return torch.zeros_like(x_t)

    model = to_velocity_model(native, VPDiscrete(), "eps")
    out = model(torch.ones(2, 2, dtype=torch.bfloat16), torch.full((2,), 0.5, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and seen == {"x": torch.bfloat16, "t": torch.float32}


def test_euler_is_ddim_in_native_coordinates():
    """FM Euler with an adapted VP-cosine eps model == native DDIM in VP-cosine time."""
    p, kind = VPCosine(), "eps"
    native = exact_native(p, kind)
    grid = torch.linspace(0.95, 0.02, 7, dtype=torch.float64)
    x_s = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fm_end = sample_euler(to_velocity_model(native, p, kind), x_s, grid)

    t = p.from_fm_time(grid)
    x = p.from_fm_state(x_s, grid[:1].expand(16))
    for i in range(len(grid) - 1):
        ti, tn = t[i].expand(16), t[i + 1].expand(16)
        eps = native(x, ti)
        x0 = (x - p.sigma(ti)[:, None] * eps) / p.alpha(ti)[:, None]
        x = p.alpha(tn)[:, None] * x0 + p.sigma(tn)[:, None] * eps
    torch.testing.assert_close(p.to_fm_state(x, t[-1].expand(16)), fm_end, atol=1e-10, rtol=0)


def _edm_heun_native(denoiser, x_s, grid):
    """EDM Algorithm 1 (deterministic) in sigma coordinates; returns the FM state at grid[-1] = 0."""
    sigmas = [float(s / (1 - s)) for s in grid]
    x = x_s * (1 + sigmas[0])
    for sig, sig_next in zip(sigmas[:-1], sigmas[1:], strict=False):
        b = torch.full((x.shape[0],), sig, dtype=x.dtype)
        d = (x - denoiser(x, b)) / sig
        x_next = x + (sig_next - sig) * d
        if sig_next > 0:
            b_next = torch.full_like(b, sig_next)
            d_next = (x_next - denoiser(x_next, b_next)) / sig_next
            x_next = x + (sig_next - sig) * 0.5 * (d + d_next)
        x = x_next
    return x


def test_heun_across_parameterizations():
    edm, vp = EDM(), VPCosine()
    v_edm = to_velocity_model(exact_native(edm, "x0"), edm, "x0")
    v_vp = to_velocity_model(exact_native(vp, "eps"), vp, "eps")
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errs = []
    for n in (8, 16, 32):
        grid = torch.linspace(0.97, 0.0, n + 1, dtype=torch.float64)
        x_start = 0.97 * x1
        a = sample_heun(v_edm, x_start, grid)
        b = sample_heun(v_vp, x_start, grid)
        # Same velocity field in FM coordinates -> same Heun trajectory.
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
        # Heun in EDM sigma-time is a different (still 2nd-order) scheme: same limit.
        native = _edm_heun_native(exact_native(edm, "x0"), x_start, grid)
        errs.append((native - a).abs().max().item())
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] / errs[2] > 2.5, errs
