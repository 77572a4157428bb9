"""Parity: MeanFlow (``distill.methods.MeanFlow``) against Gsunshine/py-meanflow, restated here.

From py-meanflow @ 1f6d72d: ``meanflow/models/meanflow.py:36-68`` (the loss: ``u_tgt = v - (t - r)
du/dt`` by one JVP along ``(v, 1, 0)``, a squared L2 over dimensions, the adaptive weight
``1 / (loss + eps)^p`` detached, the batch mean), ``meanflow/models/time_sampler.py:4-39`` (the v0
sampler, whose ``ratio`` is the probability of r != t) and ``meanflow/scripts/cifar10_v0.sh`` (the
CIFAR-10 recipe). The network is fed raw ``(t, t - r)`` as py-meanflow's UNet (``unet.py:360-374``).
Float64, fixed tiny inputs.
"""

from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from distill.methods.meanflow import MeanFlow, sample_time_pair
from distill.students.average_velocity import AverageVelocityModel

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
# cifar10_v0.sh: --tr_sampler v0 --P_mean_t -2.0 --P_std_t 2.0 --P_mean_r -2.0 --P_std_r 2.0 --norm_p 0.75 --ratio 0.75
ARGS = SimpleNamespace(P_mean_t=-2.0, P_std_t=2.0, P_mean_r=-2.0, P_std_r=2.0, ratio=0.75, norm_p=0.75, norm_eps=1e-3)


class TwoTimeNet(nn.Module):
    """A float64 net ``net(z, c_noise, c_extra)`` with two smooth time inputs."""

    extra_time = True

    def __init__(self, dim: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(dim + 2, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x, c_noise, c_extra):
        return self.body(torch.cat([x, c_noise[:, None], c_extra[:, None]], dim=1))


def logit_normal_timestep_sample(P_mean, P_std, num_samples):  # time_sampler.py:4-8 (drawn in float64)
    rnd_normal = torch.randn((num_samples,), dtype=torch.float64)
    return torch.clip(torch.sigmoid(rnd_normal * P_std + P_mean), min=0.0, max=1.0)


def sample_two_timesteps_t_r_v0(args, num_samples):  # time_sampler.py:22-39
    t = logit_normal_timestep_sample(args.P_mean_t, args.P_std_t, num_samples)
    r = logit_normal_timestep_sample(args.P_mean_r, args.P_std_r, num_samples)
    t, r = torch.maximum(t, r), torch.minimum(t, r)
    prob = torch.rand(num_samples, dtype=torch.float64)
    mask = prob < 1 - args.ratio
    r = torch.where(mask, t, r)
    return t, r


def forward_with_loss(net, x, args):
    """meanflow.py:36-68 for x (B, D); ``e`` is drawn after (t, r) here, as the project draws them."""
    t, r = sample_two_timesteps_t_r_v0(args, num_samples=x.shape[0])
    e = torch.randn_like(x)
    t, r = t.view(-1, 1), r.view(-1, 1)
    z = (1 - t) * x + t * e
    v = e - x

    def u_func(z, t, r):
        h = t - r
        return net(z, t.view(-1), h.view(-1))

    u_pred, dudt = torch.func.jvp(u_func, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u_tgt = (v - (t - r) * dudt).detach()
    loss = ((u_pred - u_tgt) ** 2).sum(dim=1)
    adp_wt = (loss.detach() + args.norm_eps) ** args.norm_p
    return (loss / adp_wt).mean()


def test_time_sampler_is_v0_with_ratio_the_probability_of_r_not_t():
    for seed in range(3):
        torch.manual_seed(seed)
        r, t = sample_time_pair(256, -2.0, 2.0, 1 - ARGS.ratio, dtype=torch.float64)
        torch.manual_seed(seed)
        t_off, r_off = sample_two_timesteps_t_r_v0(ARGS, 256)
        torch.testing.assert_close(t, t_off, rtol=0, atol=0)
        torch.testing.assert_close(r, r_off, rtol=0, atol=0)
    torch.manual_seed(0)
    r, t = sample_time_pair(20000, -2.0, 2.0, 0.25, dtype=torch.float64)
    assert abs((r == t).double().mean().item() - 0.25) < 0.015  # CIFAR-10: 75% of samples have r != t


def test_loss_and_gradient_equal_py_meanflows():
    # One draw of 2n normals equals two draws of n only where n >= 16 (CPU's vectorised normal path).
    net = TwoTimeNet()
    student = AverageVelocityModel(net, time_scale=1.0)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    method = MeanFlow(
        velocity="data",
        jvp="exact",
        p_mean=-2.0,
        p_std=2.0,
        equal_ratio=0.25,
        adaptive_power=0.75,
        adaptive_eps=1e-3,
        time_scale=1.0,
    )
    torch.manual_seed(0)
    ours = method.loss("student", x, None, student, 0)["loss"]
    grads = torch.autograd.grad(ours, list(net.parameters()))
    torch.manual_seed(0)
    theirs = forward_with_loss(net, x, ARGS)
    expected = torch.autograd.grad(theirs, list(net.parameters()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_paper_config_is_the_cifar10_v0_script():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=paper_meanflow_cifar10"])
    obj = cfg.method.objective
    assert (obj.p_mean, obj.p_std) == (ARGS.P_mean_t, ARGS.P_std_t) == (ARGS.P_mean_r, ARGS.P_std_r)
    assert obj.equal_ratio == 1 - ARGS.ratio
    assert (obj.adaptive_power, obj.adaptive_eps) == (ARGS.norm_p, ARGS.norm_eps)
    assert obj.velocity == "data" and obj.jvp == "exact" and obj.time_scale == 1.0
    assert cfg.student.init == "fresh"  # trained from scratch
    assert cfg.teacher.train_dropout == 0.2  # cifar10_v0.sh --dropout 0.2, in the student's residual blocks
    assert cfg.method.optimizer.lr == 6e-4 and list(cfg.method.optimizer.betas) == [
        0.9,
        0.999,
    ]  # train_arg_parser.py:19-20
    assert cfg.method.grad_clip == 0 and cfg.hardware.precision == "32-true"
    assert cfg.train.global_batch_size == 8 * 128
    assert cfg.train.lr_warmup_steps == 200 * (50000 // 1024)  # 200 warm-up epochs of drop_last batches
