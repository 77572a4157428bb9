"""Time grids and training-time distributions."""

import math

import pytest
import torch

from distill.core.grids import (
    GRIDS,
    cosine_grid,
    karras_grid,
    make_grid,
    shifted_grid,
    uniform_grid,
)
from distill.core.process import VPCosine
from distill.core.time_sampling import (
    sample_edm_sigma,
    sample_logit_normal,
    sample_uniform,
    shift_time,
)


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("n", [1, 4, 18])
def test_grids_decrease_and_end_at_zero(name, n):
    g = make_grid(name, n)
    assert g.dtype == torch.float64 and g.shape == (n + 1,)
    assert g[-1].item() == 0.0
    assert (g[1:] < g[:-1]).all()
    assert 0.98 < g[0].item() <= 1.0


def test_uniform_and_shifted():
    torch.testing.assert_close(uniform_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(shifted_grid(7, shift=1.0), uniform_grid(7))
    g = shifted_grid(4, shift=3.0)
    assert g[0].item() == 1.0 and g[2].item() == pytest.approx(0.75)  # 3 * .5 / (1 + 2 * .5)


def test_karras_grid_matches_edm_sigmas():
    n, rho, lo, hi = 18, 7.0, 0.002, 80.0
    i = torch.arange(n, dtype=torch.float64)
    sigmas = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    g = karras_grid(n, lo, hi, rho)
    torch.testing.assert_close(g[:-1] / (1 - g[:-1]), sigmas)
    assert g[0].item() == pytest.approx(80 / 81)


def test_cosine_grid_is_uniform_in_vp_cosine_time():
    p = VPCosine(logsnr_min=-100, logsnr_max=100)
    g = cosine_grid(4)
    torch.testing.assert_close(p.from_fm_time(g[1:-1]), torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64))
    assert g[0].item() == 1.0


def test_make_grid_kwargs_and_errors():
    torch.testing.assert_close(make_grid("shifted", 5, shift=2.0), shifted_grid(5, 2.0))
    with pytest.raises(ValueError, match="karras"):
        make_grid("linear", 5)


def test_time_sampling_shapes_ranges_and_seeding():
    def g():
        return torch.Generator().manual_seed(0)

    u = sample_uniform(2000, g(), torch.float64)
    assert u.shape == (2000,) and u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
    torch.testing.assert_close(sample_uniform(5, g(), torch.float64), u[:5])
    ln = sample_logit_normal(20000, 0.5, 1.0, g(), torch.float64)
    assert (ln > 0).all() and (ln < 1).all()
    assert torch.logit(ln).mean().item() == pytest.approx(0.5, abs=0.03)
    sig = sample_edm_sigma(20000, generator=g(), dtype=torch.float64)
    assert torch.log(sig).mean().item() == pytest.approx(-1.2, abs=0.04)
    assert torch.log(sig).std().item() == pytest.approx(1.2, abs=0.04)
    assert sample_uniform(3).dtype == torch.get_default_dtype()


def test_shift_time():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_time(s, 1.0), s)
    shifted = shift_time(s, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > s[1:-1]).all()
    # The shift is the FM image of scaling the EDM sigma by k: s/(1-s) -> k s/(1-s).
    torch.testing.assert_close(shifted[1:-1] / (1 - shifted[1:-1]), 3 * s[1:-1] / (1 - s[1:-1]))
    assert math.isclose(shift_time(torch.tensor(0.5), 3.0).item(), 0.75)
