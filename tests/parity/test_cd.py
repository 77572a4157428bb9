"""Parity: consistency distillation (``distill.methods.ConsistencyDistillation``) against CM, restated here.

From ``openai/consistency_models`` @ e32b69e ``cm/karras_diffusion.py`` ``consistency_losses``
(``:106-247``): the index law, the Karras pair (t, t2), the same-noise state, the teacher's Heun step
in EDM coordinates (``heun_solver`` ``:143-160``), the target at t2 under no_grad with the
prediction's dropout state, and the uniform-weight L2 (``:207-209``). The CIFAR-10 recipe is
``openai/consistency_models_cifar10`` @ d086e77 (``jcm/losses.py:242-383``, the same algorithm in
JAX, with theta^- = stopgrad(theta)). Float64, fixed tiny inputs.

A remaining difference, not tested here: CM's distiller carries its boundary condition in c_skip /
c_out at sigma_min, the project's consistency function ``x - s v`` at sigma = 0. Both sides below
share one denoiser ``D(x, sigma)`` (the student's consistency function), so the test covers
everything but that parameterisation.
"""

from pathlib import Path

import torch
import yaml
from torch import nn

from distill.methods.consistency import ConsistencyDistillation

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5
CONF = Path(__file__).resolve().parents[2] / "conf"


def denoiser(weight: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, dropout: bool = False) -> torch.Tensor:
    """A smooth EDM-style denoiser ``D(x_sigma, sigma)`` (B, D) with a trainable (D, D) weight; with
    ``dropout`` its features are dropped at rate 0.5 from the global RNG, as a training network's are."""
    s = sigma[:, None]
    c_skip, c_out = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2), s * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt()
    c_in = 1 / (s**2 + SIGMA_DATA**2).sqrt()
    features = torch.tanh((c_in * x) @ weight + s.log() / 4)
    if dropout:
        features = features * (torch.rand(features.shape, dtype=F64) >= 0.5) * 2
    return c_skip * x + c_out * features


class FMVelocity(nn.Module):
    """The project's view of ``denoiser``: ``v(x_s, s) = (x_s - D(x_s / (1 - s), s / (1 - s))) / s``."""

    def __init__(self, weight: torch.Tensor, trainable: bool, dropout: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=trainable)
        self.dropout = dropout

    def forward(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a = s[:, None]
        return (x_s - denoiser(self.weight, x_s / (1 - a), s / (1 - s), self.dropout)) / a


def karras_sigma(index: torch.Tensor, num_scales: int) -> torch.Tensor:
    # cm/karras_diffusion.py:178-186: t and t2 on the rho = 7 ramp from sigma_max to sigma_min.
    hi, lo = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return (hi + index / (num_scales - 1) * (lo - hi)) ** RHO


def official_cd_loss(x_start, student_w, teacher_w, num_scales, seed, dropout=False):
    """``consistency_losses`` with ``loss_norm="l2"``, ``weight_schedule="uniform"``, target = online
    params under no_grad (CIFAR-10's stopgrad; at step 0 also what any EMA target holds)."""
    torch.manual_seed(seed)
    # Draw order as the project's (CM draws the noise first, :119-120); independent draws, same law.
    indices = torch.randint(0, num_scales - 1, (x_start.shape[0],))  # :174-176
    noise = torch.randn_like(x_start)
    t, t2 = karras_sigma(indices.to(F64), num_scales), karras_sigma((indices + 1).to(F64), num_scales)
    x_t = x_start + noise * t[:, None]  # :188
    dropout_state = torch.get_rng_state()  # :190
    distiller = denoiser(student_w, x_t, t, dropout)  # :191

    with torch.no_grad():  # heun_solver, :143-160
        d = (x_t - denoiser(teacher_w, x_t, t)) / t[:, None]
        samples = x_t + d * (t2 - t)[:, None]
        next_d = (samples - denoiser(teacher_w, samples, t2)) / t2[:, None]
        x_t2 = x_t + (d + next_d) * ((t2 - t) / 2)[:, None]
        torch.set_rng_state(dropout_state)  # :198: the target drops what the prediction dropped
        target = denoiser(student_w, x_t2, t2, dropout)  # :199-200
    weights = torch.ones_like(t)  # get_weightings("uniform"), :27-28
    return (((distiller - target) ** 2).mean(dim=1) * weights).mean()  # :207-209, then loss.mean()


def test_cd_loss_and_gradient_equal_cms_with_the_edm_heun_step():
    torch.manual_seed(0)
    dim, batch, num_scales = 6, 32, 18
    x0 = torch.randn(batch, dim, dtype=F64)
    teacher_w, student_w = 0.5 * torch.randn(dim, dim, dtype=F64), 0.5 * torch.randn(dim, dim, dtype=F64)
    teacher, student = FMVelocity(teacher_w, False), FMVelocity(student_w, True)
    method = ConsistencyDistillation(num_scales=num_scales, ema_target=0.0, loss="l2", solver="edm_heun")

    torch.manual_seed(1)
    ours = method.loss("student", x0, teacher, student, 0)["loss"]
    ours.backward()

    w = student_w.clone().requires_grad_(True)
    theirs = official_cd_loss(x0, w, teacher_w, num_scales, seed=1)
    (grad,) = torch.autograd.grad(theirs, w)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(student.weight.grad, grad, rtol=1e-9, atol=1e-12)


def test_online_target_reuses_the_predictions_dropout_masks():
    torch.manual_seed(0)
    x0 = torch.randn(32, 6, dtype=F64)
    teacher_w, student_w = 0.5 * torch.randn(6, 6, dtype=F64), 0.5 * torch.randn(6, 6, dtype=F64)
    teacher, student = FMVelocity(teacher_w, False), FMVelocity(student_w, True, dropout=True)
    method = ConsistencyDistillation(ema_target=0.0, solver="edm_heun")
    torch.manual_seed(1)
    ours = method.loss("student", x0, teacher, student, 0)["loss"]
    theirs = official_cd_loss(x0, student_w, teacher_w, 18, seed=1, dropout=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_fm_heun_step_is_a_different_second_order_target():
    """The default ``solver: heun`` averages v in FM coordinates, not d: same Euler part, other Heun target."""
    torch.manual_seed(0)
    x0 = torch.randn(32, 6, dtype=F64)
    teacher_w, student_w = 0.5 * torch.randn(6, 6, dtype=F64), 0.5 * torch.randn(6, 6, dtype=F64)
    teacher, student = FMVelocity(teacher_w, False), FMVelocity(student_w, True)
    torch.manual_seed(1)
    fm = ConsistencyDistillation(ema_target=0.0, solver="heun").loss("student", x0, teacher, student, 0)["loss"]
    official = official_cd_loss(x0, student_w, teacher_w, 18, seed=1)
    assert not torch.allclose(fm, official, rtol=1e-6)
    torch.testing.assert_close(fm, official, rtol=0.2, atol=0)  # the same loss up to the solver's O(h^3)


def test_paper_config_is_cms_cifar10_recipe():
    """configs/cifar10_ve_cd.py and the ternary-searched 2-step point of editing_multistep_sampling.ipynb."""
    cfg = yaml.safe_load((CONF / "experiment" / "paper_cd_cifar10.yaml").read_text())
    objective = cfg["method"]["objective"]
    assert objective["num_scales"] == 18 and objective["ema_target"] == 0.0 and objective["solver"] == "edm_heun"
    assert (
        cfg["method"]["optimizer"]["_target_"] == "torch.optim.RAdam"
        and float(cfg["method"]["optimizer"]["lr"]) == 4e-4
    )
    assert cfg["method"]["grad_clip"] == 0 and cfg["train"]["global_batch_size"] == 512
    # ts = [0, 11, 17] on the 18-point training grid: the re-noising sigma is index 11's.
    (sigma,) = objective["sampling_sigmas"]
    torch.testing.assert_close(torch.tensor(sigma, dtype=F64), karras_sigma(torch.tensor(11.0, dtype=F64), 18))
