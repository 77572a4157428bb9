"""Parity: ECT (``distill.methods.ConsistencyTraining``, ``schedule: ect``) against locuslab/ect, restated here.

From ``locuslab/ect`` @ 4311059 (branch main): ``training/loss.py`` ``ECMLoss`` (``:45-50`` the
sigmoid r(t), ``:52-92`` the loss: shared eps, shared dropout state, the r > 0 mask, the L2 norm
over all dimensions divided by t - r), the stage schedule of ``training/ct_training_loop.py``
(``:235-242``, ``:278-280``, ``:375-386``) with ``run_ecm.sh``'s ``--tick=12.8 --double=250
--batch=128``, and ``training/networks.py`` ``ECMPrecond`` (``:697-718``). Float64, fixed tiny inputs.
"""

import math
from pathlib import Path

import torch
import yaml
from torch import nn

from distill.methods.consistency_training import ConsistencyTraining

F64 = torch.float64
CONF = Path(__file__).resolve().parents[2] / "conf"


def ect_t_to_r_sigmoid(t: torch.Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    # training/loss.py:45-50
    adj = 1 + k * torch.sigmoid(-b * t)
    decay = 1 / q ** (stage + 1)
    ratio = 1 - decay * adj
    r = t * ratio
    return torch.clamp(r, min=0)


def denoiser(weight: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, dropout: bool) -> torch.Tensor:
    """``D(x_sigma, sigma)`` (B, D), EDM-scaled, trainable (D, D) weight, features dropped at 0.5."""
    s = sigma[:, None]
    features = torch.tanh(x @ weight / (s**2 + 0.25).sqrt() + s.log() / 4)
    if dropout:
        features = features * (torch.rand(features.shape, dtype=F64) >= 0.5) * 2
    return 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * features


class FMVelocity(nn.Module):
    """The project's view of ``denoiser``; undefined (0/0) at s = 0, as an x0-predicting network is."""

    def __init__(self, weight: torch.Tensor, dropout: bool):
        super().__init__()
        self.weight, self.dropout = nn.Parameter(weight.clone()), dropout

    def forward(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a = s[:, None]
        return (x_s - denoiser(self.weight, x_s / (1 - a), s / (1 - s), self.dropout)) / a


def official_ect_loss(images, weight, stage, seed, dropout):
    """``ECMLoss.__call__`` (``training/loss.py:52-92``) with c = 0, no augmentation."""
    torch.manual_seed(seed)
    # ECT draws rnd_normal in float32 on the device (:54); this float64 draw is the same law, drawn
    # as the project draws it so that both sides see the same numbers.
    t = (torch.randn(images.shape[0], dtype=F64) * 2.0 - 1.1).exp()  # :55
    assert bool(((t >= 0.002) & (t <= 80)).all()), "the project clamps t to [0.002, 80]: pick a seed inside"
    r = ect_t_to_r_sigmoid(t, stage)  # :56
    y = images
    eps = torch.randn_like(y)  # :62-64, one eps for t and r
    rng_state = torch.get_rng_state()  # :67
    d_yt = denoiser(weight, y + eps * t[:, None], t, dropout)  # :68
    if r.max() > 0:  # :70-79
        torch.set_rng_state(rng_state)
        with torch.no_grad():
            d_yr = denoiser(weight, y + eps * r[:, None], r.clamp_min(1e-300), dropout)
        mask = (r > 0)[:, None]
        d_yr = torch.nan_to_num(d_yr)
        d_yr = mask * d_yr + (~mask) * y
    else:
        d_yr = y
    loss = ((d_yt - d_yr) ** 2).sum(dim=1)  # :82-83
    loss = torch.sqrt(loss)  # :86-89, c = 0
    return (loss / (t - r)).mean(), r  # :92, then .mean() in ct_training_loop.py:254


def test_ect_loss_and_gradient_equal_ects_at_every_stage():
    torch.manual_seed(0)
    dim, batch = 6, 48
    x0 = torch.randn(batch, dim, dtype=F64)
    w0 = 0.5 * torch.randn(dim, dim, dtype=F64)
    for stage in (0, 1, 4):
        method = ConsistencyTraining(schedule="ect", huber_c=0.0, num_stages=None, images_per_stage=3_200_000)
        method.set_batch(128)
        student = FMVelocity(w0, dropout=True)
        torch.manual_seed(0)
        ours = method.loss("student", x0, None, student, step=25_000 * stage)["loss"]
        ours.backward()
        w = w0.clone().requires_grad_(True)
        theirs, r = official_ect_loss(x0, w, stage, seed=0, dropout=True)
        (grad,) = torch.autograd.grad(theirs, w)
        if stage == 0:
            assert bool((r == 0).any()) and bool((r > 0).any()), "stage 0 masks the small-t rows"
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(student.weight.grad, grad, rtol=1e-9, atol=1e-12)


def official_stage_per_iteration(iterations: int, batch: int = 128, kimg_per_tick: float = 12.8, double: int = 250):
    """The stage each iteration trains at (``ct_training_loop.py:235-242, 278-280, 375-386``)."""
    cur_nimg, cur_tick, tick_start_nimg, stage, stages = 0, 0, 0, 0, []
    for _ in range(iterations):
        stages.append(stage)
        cur_nimg += batch
        if cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue
        cur_tick += 1
        tick_start_nimg = cur_nimg
        new_stage = (cur_tick - 1) // double
        if new_stage > stage:
            stage = new_stage
    return stages


def test_stages_in_images_follow_ects_ticks_up_to_one_iteration():
    method = ConsistencyTraining(schedule="ect", num_stages=None, images_per_stage=3_200_000)
    method.set_batch(128)
    official = official_stage_per_iteration(75_005)
    ours = [method.stage(i) for i in range(75_005)]
    # ECT's tick 0 is one iteration long, so its stage k starts at iteration 25000 k + 1, ours at 25000 k.
    differ = [i for i, (a, b) in enumerate(zip(ours, official, strict=True)) if a != b]
    assert differ == [25_000, 50_000, 75_000]
    assert official[25_001] == 1 and official[75_001] == 3


def test_ecmprecond_scalings_restated():
    """networks.py:697-718 (training branch) on the project's re-wrapped EDM network."""
    from distill.nets.ecm_precond import ECMPrecond
    from distill.nets.edm import VPPrecond

    torch.manual_seed(0)
    vp = VPPrecond(
        img_resolution=8,
        img_channels=1,
        model_channels=8,
        channel_mult=[1],
        num_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    ).double()
    net = ECMPrecond(vp)
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    sigma = torch.tensor([0.05, 20.0], dtype=F64).reshape(-1, 1, 1, 1)
    sigma_data = 0.5
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    expected = c_skip * x + c_out * vp.model(c_in * x, c_noise.flatten(), class_labels=None)
    torch.testing.assert_close(net(x, sigma.flatten()), expected)


def test_paper_config_is_run_ecm_sh():
    cfg = yaml.safe_load((CONF / "experiment" / "paper_ect_cifar10.yaml").read_text())
    objective, optimizer = cfg["method"]["objective"], cfg["method"]["optimizer"]
    assert objective["images_per_stage"] == 250 * 12_800 and objective["num_stages"] is None  # --double=250 --tick=12.8
    assert objective["sampling_sigmas"] == [0.821] and objective["student_precond"] == "edm"  # --mid_t, ECMPrecond
    assert objective["q"] == 2.0 and objective["huber_c"] == 0.0  # -q 2, -c 0
    assert optimizer["_target_"] == "torch.optim.RAdam" and float(optimizer["lr"]) == 1e-4  # --optim=RAdam --lr=0.0001
    assert cfg["teacher"]["train_dropout"] == 0.2 and cfg["method"]["grad_clip"] == 0  # --dropout=0.2, no clipping
    assert cfg["train"]["global_batch_size"] == 128 and math.isclose(cfg["method"]["ema_decays"][0], 0.9999)
