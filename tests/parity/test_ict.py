"""Parity: iCT (``distill.methods.ConsistencyTraining``, ``schedule: ict``) against the iCT paper, restated here.

No official iCT code was released; the restatement follows Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models" (arXiv 2310.14189): the discretisation curriculum
N(k) (Sec. 3.4, Eq. 8), the Karras sigmas (Sec. 2), the discretised lognormal index law (Sec.
3.5), the weight lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) (Sec. 3.2) and the pseudo-Huber
metric with c = 0.00054 sqrt(d) (Sec. 3.3), with theta^- = stopgrad(theta) (Sec. 3.1). Float64,
fixed tiny inputs.
"""

import math

import torch
from torch import nn

from distill.methods.consistency_training import ConsistencyTraining

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX, RHO, P_MEAN, P_STD = 0.002, 80.0, 7.0, -1.1, 2.0


def paper_num_points(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    # Eq. 8: N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)).
    k_prime = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / k_prime), s1) + 1


def paper_sigmas(num_points: int) -> torch.Tensor:
    # Sec. 2: sigma_i = (sigma_min^(1/rho) + (i - 1)/(N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho.
    i = torch.arange(1, num_points + 1, dtype=F64)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (lo + (i - 1) / (num_points - 1) * (hi - lo)) ** RHO


def paper_index_probs(sigmas: torch.Tensor) -> torch.Tensor:
    # Sec. 3.5: p(sigma_i) ∝ erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std))
    #                     - erf((ln sigma_i - P_mean) / (sqrt 2 P_std)).
    cdf = torch.special.erf((sigmas.log() - P_MEAN) / (math.sqrt(2) * P_STD))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def consistency_map(weight: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """f(x_sigma, sigma), (B, D): a smooth map with a trainable (D, D) weight."""
    s = sigma[:, None]
    return 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * torch.tanh(x @ weight / (s**2 + 0.25).sqrt())


class FMVelocity(nn.Module):
    """The project's view of ``consistency_map``: ``x_s - s v(x_s, s) = f(x_s / (1 - s), s / (1 - s))``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a = s[:, None]
        return (x_s - consistency_map(self.weight, x_s / (1 - a), s / (1 - s))) / a


def test_curriculum_grid_and_index_law_equal_the_papers():
    total = 400_000
    method = ConsistencyTraining(schedule="ict")
    method.set_budget(total)
    for k in (0, 50_000, 99_999, 100_000, 250_000, 350_000, 399_999):
        num_points = paper_num_points(k, total)
        torch.manual_seed(3)
        t, r = method.sigma_pairs(4096, k, torch.device("cpu"))
        sigmas, probs = paper_sigmas(num_points), paper_index_probs(paper_sigmas(num_points))
        torch.manual_seed(3)
        n = torch.multinomial(probs, 4096, replacement=True)  # i ~ p(sigma_i), then the pair (sigma_{i+1}, sigma_i)
        torch.testing.assert_close(t, sigmas[n + 1], rtol=1e-12, atol=0)
        torch.testing.assert_close(r, sigmas[n], rtol=1e-12, atol=0)


def test_ict_loss_and_gradient_equal_the_papers():
    torch.manual_seed(0)
    dim, batch, step, total = 6, 64, 120_000, 400_000
    x0 = torch.randn(batch, dim, dtype=F64)
    w0 = 0.5 * torch.randn(dim, dim, dtype=F64)
    student = FMVelocity(w0)
    method = ConsistencyTraining(schedule="ict", huber_c=0.00054)
    method.set_budget(total)
    torch.manual_seed(1)
    ours = method.loss("student", x0, None, student, step)["loss"]
    ours.backward()

    w = w0.clone().requires_grad_(True)
    torch.manual_seed(1)
    sigmas = paper_sigmas(paper_num_points(step, total))
    i = torch.multinomial(paper_index_probs(sigmas), batch, replacement=True)
    z = torch.randn_like(x0)  # one z for both points
    hi, lo = sigmas[i + 1], sigmas[i]
    pred = consistency_map(w, x0 + hi[:, None] * z, hi)
    with torch.no_grad():
        target = consistency_map(w, x0 + lo[:, None] * z, lo)  # theta^- = stopgrad(theta)
    c = 0.00054 * math.sqrt(dim)
    distance = ((pred - target).pow(2).sum(dim=1) + c**2).sqrt() - c  # Sec. 3.3, the norm over all dims
    theirs = (distance / (hi - lo)).mean()  # Sec. 3.2: lambda = 1 / (sigma_{i+1} - sigma_i)
    (grad,) = torch.autograd.grad(theirs, w)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(student.weight.grad, grad, rtol=1e-9, atol=1e-12)
