"""The analytic teacher: the exact velocity field of a Gaussian mixture (``teacher=gmm_exact``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.core.gmm import GaussianMixture
from distill.teachers.base import Teacher


class ExactMixtureVelocity(nn.Module):
    """``v(x_s, s) = E[eps | x_s] - E[x0 | x_s]`` in closed form, computed in float64."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        s64 = s.double()
        x0, eps = self.mixture.posterior(x.double().flatten(1), 1 - s64, s64)
        return (eps - x0).view_as(x).to(x.dtype)


class GMMTeacher(Teacher):
    """Ground truth for samplers and distillation: no training, no approximation error."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__(ExactMixtureVelocity(mixture), (mixture.dim,), {"kind": "gmm_exact"})
        self.mixture = mixture

    def sample_data(self, n: int, seed: int = 0) -> Tensor:
        return self.mixture.sample(n, torch.Generator().manual_seed(seed)).float()
