"""The two denoising losses teachers are pretrained with (unreduced: one value per sample)."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.core.losses import edm_loss_weight, per_sample_mse
from distill.core.prediction import fm_noise
from distill.core.tensors import append_dims
from distill.core.time_sampling import sample_edm_sigma, sample_logit_normal
from distill.nets.velocity import VelocityModel


def flow_matching_loss(model: VelocityModel, x0: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """``||v(x_s, s) - (eps - x0)||^2`` with logit-normal s (Esser et al. 2024)."""
    s = sample_logit_normal(x0.shape[0], mean=mean, std=std, dtype=x0.dtype).to(x0.device)
    eps = torch.randn_like(x0)
    x_s = fm_noise(x0, eps, s)
    return per_sample_mse(model.native(x_s, s), eps - x0)


def edm_loss(model: VelocityModel, x0: Tensor, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """EDM's ``lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||^2`` with log-normal sigma."""
    sigma = sample_edm_sigma(x0.shape[0], p_mean=p_mean, p_std=p_std, dtype=x0.dtype).to(x0.device)
    x = x0 + append_dims(sigma, x0.ndim) * torch.randn_like(x0)
    weight = edm_loss_weight(sigma, model.sigma_data)
    return weight * per_sample_mse(model.native(x, sigma), x0)


def denoising_loss(model: VelocityModel, x0: Tensor) -> Tensor:
    """The loss matching ``model.scheme``."""
    return flow_matching_loss(model, x0) if model.scheme == "fm" else edm_loss(model, x0)
