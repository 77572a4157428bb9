"""Parity: AnyFlow (``distill.methods.AnyFlow``) against NVlabs/AnyFlow, restated here in float64.

From NVlabs/AnyFlow @ 549236a: ``far/trainers/trainer_wan_anyflow_pretrain.py`` (``sample_timestep``,
``compute_central_difference``, ``train_bidirection``: the flow-map loss), ``far/trainers/
trainer_wan_anyflow_onpolicy.py`` (``_compute_kl_grad``, ``generator_loss``, ``discriminator_loss``:
the DM loss and the fake score's loss), ``far/pipelines/pipeline_wan_anyflow.py`` (``training_rollout``)
and ``far/schedulers/scheduling_flowmap_euler_discrete.py`` (grid, shift, ``step``, ``scale_noise``, the
``beta08`` weight). Times there are timesteps in [0, 1000]; one device (rank 0 of 1); no guidance
(``fuse_guidance_scale`` and ``real_guidance_scale`` unset) and no image conditioning (``i2v_prob`` 0).
The official "transformer" is the project's network fed the same times: ``net(z, t, t - r)`` in FM time.
"""

import torch
from torch import nn

from distill.methods.anyflow import AnyFlow
from distill.students.average_velocity import AverageVelocityModel
from tests.parity.nets import Velocity

T = 1000  # num_train_timesteps
DIM = 3


class TwoTimeNet(nn.Module):
    """A float64 net ``net(z, c_noise, c_extra)`` with two smooth time inputs (fed raw FM times)."""

    extra_time = True

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(DIM + 2, 32), nn.Tanh(), nn.Linear(32, DIM)).double()

    def forward(self, x, c_noise, c_extra):
        return self.body(torch.cat([x, c_noise[:, None], c_extra[:, None]], dim=1))


# --- the official scheduler (scheduling_flowmap_euler_discrete.py) ---------------------------------
class Scheduler:
    def __init__(self, shift=1.0, weight_type="beta08"):
        self.shift = shift
        self.set_timesteps(T)
        t = self.timesteps / T
        y = t**1.0 * (1 - t) ** 0.5  # beta08
        self.linear_timesteps_weights = y * (T / y.sum())
        assert weight_type == "beta08"

    def apply_shift(self, sigmas):
        return sigmas if self.shift == 1.0 else self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    def set_timesteps(self, n):
        self.timesteps = self.apply_shift(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)) * T

    def get_train_weight(self, timesteps):
        idx = torch.argmin((self.timesteps.unsqueeze(1) - timesteps.flatten().unsqueeze(0)).abs(), dim=0)
        return self.linear_timesteps_weights[idx.reshape(timesteps.shape)]

    def scale_noise(self, sample, timestep, noise):
        timestep = (timestep.to(sample.dtype) / T).view(-1, *[1] * (noise.ndim - 1))
        return timestep * noise + (1.0 - timestep) * sample

    def step(self, model_output, sample, timestep, r_timestep):
        timestep = (timestep / T).view(-1, *[1] * (model_output.ndim - 1)) if timestep.ndim else timestep / T
        r_timestep = (r_timestep / T).view(-1, *[1] * (model_output.ndim - 1)) if r_timestep.ndim else r_timestep / T
        return sample - (timestep - r_timestep) * model_output


def official_transformer(net):
    """``transformer(z, timestep, r_timestep)`` over timesteps: the same net, fed FM times."""
    return lambda z, t, r: net(z, t / T, (t - r) / T)


# --- trainer_wan_anyflow_pretrain.py ------------------------------------------------------------
def sample_timestep(batch_size, cfg):
    t_1 = torch.rand(batch_size, dtype=torch.float64)
    t_2 = torch.rand(batch_size, dtype=torch.float64)
    t, r = torch.maximum(t_1, t_2), torch.minimum(t_1, t_2)
    n_diffusion = round(cfg["diffusion_ratio"] * batch_size)
    n_consistency = round(cfg["consistency_ratio"] * batch_size)
    is_diffusion = torch.zeros(batch_size, dtype=torch.bool)
    for i in range(batch_size):
        if i < n_diffusion:
            r[i] = t[i]
            is_diffusion[i] = True
        elif i < n_diffusion + n_consistency:
            r[i] = 0
    return t, r, is_diffusion


def train_bidirection(transformer, scheduler, latents, cfg):
    batch_size = latents.shape[0]
    noise = torch.randn_like(latents)
    t, r, is_diffusion = sample_timestep(batch_size, cfg)
    t = scheduler.apply_shift(t) * T
    r = scheduler.apply_shift(r) * T
    noisy = scheduler.scale_noise(latents, t, noise)
    noise_pred = transformer(noisy, t, r)
    eps = cfg["epsilon"]
    with torch.no_grad():  # compute_central_difference
        v_pred = noise - latents
        plus = transformer(noisy + v_pred * (eps / T), t + eps, r)
        minus = transformer(noisy - v_pred * (eps / T), t - eps, r)
        dF_dt = (plus - minus) / (2 * eps * 1.0)
    target = (noise - latents) - (t - r).view(batch_size, 1) * dF_dt
    loss = torch.mean(((noise_pred - target) ** 2).reshape(batch_size, -1), dim=-1)
    loss = loss * scheduler.get_train_weight(t)
    with torch.no_grad():
        scale_weight = loss[is_diffusion].mean() / (loss[~is_diffusion] + 1e-5)
    loss = loss.clone()
    loss[~is_diffusion] = loss[~is_diffusion] * scale_weight
    return loss.mean()


# --- pipeline_wan_anyflow.py and trainer_wan_anyflow_onpolicy.py -------------------------------
def training_rollout(transformer, scheduler, latents, num_inference_steps, grad_timestep):
    def inference_range(latents, timesteps):
        for i, t in enumerate(timesteps[:-1]):
            r = timesteps[i + 1]
            if t == r:
                continue
            tt, rr = t.expand(latents.shape[0]), r.expand(latents.shape[0])
            latents = scheduler.step(transformer(latents, tt, rr), latents, t, r)
        return latents

    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    if grad_timestep is None:
        return inference_range(latents, timesteps)
    latents = inference_range(latents, [timesteps[0], timesteps[grad_timestep]])
    latents = inference_range(latents, [timesteps[grad_timestep], timesteps[grad_timestep + 1]])
    return inference_range(latents, [timesteps[grad_timestep + 1], timesteps[-1]])


def compute_kl_grad(real, fake, dmd_scheduler, noisy, pred, timesteps):
    zeros = torch.zeros_like(timesteps)
    pred_fake = dmd_scheduler.step(fake(noisy, timesteps / T), noisy, timesteps, zeros)
    pred_real = dmd_scheduler.step(real(noisy, timesteps / T), noisy, timesteps, zeros)
    grad = pred_fake - pred_real
    normalizer = torch.abs(pred - pred_real).mean(dim=[1], keepdim=True)
    return torch.nan_to_num(grad / normalizer)


def generator_loss(transformer, scheduler, real, fake, dmd_scheduler, latents, nfe, k, cfg):
    pred = training_rollout(transformer, scheduler, torch.randn_like(latents), nfe, k)
    with torch.no_grad():
        t = torch.rand(pred.shape[0]).double()  # drawn in float32 there; float64 from here on
        timesteps = (dmd_scheduler.apply_shift(t) * T).clamp(cfg["min_timestep"], cfg["max_timestep"])
        noisy = dmd_scheduler.scale_noise(pred, timesteps, torch.randn_like(pred)).detach()
        grad = compute_kl_grad(real, fake, dmd_scheduler, noisy, pred, timesteps)
    mse = nn.functional.mse_loss(pred.double(), (pred.double() - grad.double()).detach(), reduction="mean")
    return cfg["dmd_weight"] * mse


def discriminator_loss(transformer, scheduler, fake, dmd_scheduler, latents, nfe, k, cfg):
    with torch.no_grad():
        latents = training_rollout(transformer, scheduler, torch.randn_like(latents), nfe, k)
    noise = torch.randn_like(latents)
    t = torch.sigmoid(torch.normal(mean=0.0, std=1.0, size=(latents.shape[0],)).double())  # logit_normal(0, 1)
    timesteps = (dmd_scheduler.apply_shift(t) * T).clamp(cfg["min_timestep"], cfg["max_timestep"])
    noisy = dmd_scheduler.scale_noise(latents, timesteps, noise)
    noise_pred = fake(noisy, timesteps / T)
    return torch.mean((noise_pred - (noise - latents)) ** 2)


CFG = {"diffusion_ratio": 0.5, "consistency_ratio": 0.25, "epsilon": 5, "dmd_weight": 1.0}
CFG_DMD = {"min_timestep": 20, "max_timestep": 980, "dmd_weight": 1.0}


def method(**kw) -> AnyFlow:
    defaults = dict(time_shift=3.0, dmd_shift=3.0, sampling_shift=3.0, time_scale=1.0, min_time=0.02, max_time=0.98)
    return AnyFlow(**{**defaults, **kw})


def data(n=16):
    return torch.randn(n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def test_flowmap_loss_and_gradient_equal_anyflows():
    net = TwoTimeNet()
    student = AverageVelocityModel(net, time_scale=1.0)
    x = data()
    torch.manual_seed(0)
    ours, _ = method().flowmap_loss(x, None, student)
    grads = torch.autograd.grad(ours, list(net.parameters()))
    torch.manual_seed(0)
    theirs = train_bidirection(official_transformer(net), Scheduler(shift=3.0), x, CFG)
    expected = torch.autograd.grad(theirs, list(net.parameters()))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_dm_loss_and_gradient_through_the_rollout_equal_anyflows():
    net, real, fake = TwoTimeNet(), Velocity(DIM, seed=3), Velocity(DIM, seed=4)
    student = AverageVelocityModel(net, time_scale=1.0)
    ours_method = method()
    ours_method.fake_score = fake
    x = data()
    for nfe, k in ((1, 0), (4, 0), (4, 2), (8, 7)):
        torch.manual_seed(nfe + k)
        ours = ours_method.dm_loss(x, real, student, nfe, k)
        grads = torch.autograd.grad(ours, list(net.parameters()))
        torch.manual_seed(nfe + k)
        theirs = generator_loss(
            official_transformer(net), Scheduler(3.0), real, fake, Scheduler(3.0), x, nfe, k, CFG_DMD
        )
        expected = torch.autograd.grad(theirs, list(net.parameters()))
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
        assert ours > 0 and any(g.abs().sum() > 0 for g in grads)
        for a, b in zip(grads, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_fake_score_loss_equals_anyflows_discriminator_loss():
    net, fake = TwoTimeNet(), Velocity(DIM, seed=4)
    student = AverageVelocityModel(net, time_scale=1.0)
    ours_method = method()
    ours_method.fake_score = fake
    x = data()
    torch.manual_seed(5)
    ours = ours_method.fake_score_loss(x, student, 4, 1)
    grads = torch.autograd.grad(ours, list(fake.parameters()))
    torch.manual_seed(5)
    theirs = discriminator_loss(official_transformer(net), Scheduler(3.0), fake, Scheduler(3.0), x, 4, 1, CFG_DMD)
    expected = torch.autograd.grad(theirs, list(fake.parameters()))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_sampling_is_anyflows_pipeline_at_every_nfe():
    net = TwoTimeNet()
    student = AverageVelocityModel(net, time_scale=1.0)
    noise = data(5)
    for nfe in (1, 2, 3, 8, 32):
        ours = method().sample(student, noise, nfe)
        with torch.no_grad():
            theirs = training_rollout(official_transformer(net), Scheduler(3.0), noise, nfe, None)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
