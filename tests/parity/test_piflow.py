"""pi-Flow parity: the GMFlow and DX policies' velocities, their substep rollouts, the pi-ID training loss
(data-free and data-started, its state draws, window, teacher interleave, dropout and step weights) with
its gradients, and few-step sampling, against float64 restatements of the official code, Lakonik/piFlow
@ 4229541 (lakonlab/models/diffusions/piflow.py, piflow_policies/gmflow.py, piflow_policies/dx.py,
gmflow.py gmflow_posterior_mean_jit, losses/diffusion_loss.py DiffusionMSELoss).
"""

import math

import pytest
import torch
from torch import nn

from distill.core.policies import DXPolicy, GMFlowPolicy, gm_from_velocity
from distill.methods.piflow import PiFlow
from distill.nets.velocity import VelocityModel
from distill.students.policy import DXStudent

DT = torch.float64


def warp(u, shift):
    # Lakonik/piFlow lakonlab/models/diffusions/sampler.py (ContinuousTimeStepSampler.warp_t)
    return shift * u / (1 + (shift - 1) * u)


def unwarp(sigma, shift):
    # sampler.py (ContinuousTimeStepSampler.unwarp_t)
    return sigma / (shift + (1 - shift) * sigma)


def official_posterior_mean(sigma_src, sigma, x_src, x, gm_means, gm_vars, gm_logweights, eps):
    # gmflow.py gmflow_posterior_mean_jit, gm_dim 1, channel_dim 2
    sigma_src, sigma = sigma_src.clamp(min=eps), sigma.clamp(min=eps)
    a_over_s_src, a_over_s = (1 - sigma_src) / sigma_src, (1 - sigma) / sigma
    zeta = (a_over_s.square() - a_over_s_src.square()).unsqueeze(1)
    nu = (a_over_s * x / sigma - a_over_s_src * x_src / sigma_src).unsqueeze(1)
    denom = (gm_vars * zeta + 1).clamp(min=eps)
    out_means = (gm_vars * nu + gm_means) / denom
    delta = (gm_means * (nu - 0.5 * zeta * gm_means)).sum(dim=2, keepdim=True) / denom
    return (out_means * (gm_logweights + delta).softmax(dim=1)).sum(dim=1)


class OfficialGMFlowPolicy:
    # piflow_policies/gmflow.py GMFlowPolicy (eps 1e-6 as forward_train builds it)
    def __init__(self, out, x_src, sigma_src, eps=1e-6):
        self.x_src, self.sigma_src, self.eps = x_src, sigma_src.reshape(-1, 1, 1, 1), eps
        s = self.sigma_src.unsqueeze(1)
        self.x0 = {
            "means": x_src.unsqueeze(1) - s * out["means"],
            "gm_vars": (out["logstds"] * 2).exp() * s.square(),
            "logweights": out["logweights"],
        }

    def pi(self, x, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1)
        if (sigma == self.sigma_src).all() and (x == self.x_src).all():
            x0 = (self.x0["logweights"].softmax(dim=1) * self.x0["means"]).sum(dim=1)
        else:
            x0 = official_posterior_mean(self.sigma_src, sigma, self.x_src, x, *self.x0.values(), self.eps)
        return (x - x0) / sigma.clamp(min=self.eps)

    def detach(self):
        new = OfficialGMFlowPolicy.__new__(OfficialGMFlowPolicy)
        new.x_src, new.sigma_src, new.eps = self.x_src, self.sigma_src, self.eps
        new.x0 = {k: v.detach() for k, v in self.x0.items()}
        return new

    def dropout_(self, p):
        if p <= 0 or p >= 1:
            return self
        logweights = self.x0["logweights"]
        mask = torch.rand((*logweights.shape[:2], 1, 1, 1)) < p
        mask &= ~mask.all(dim=1, keepdim=True)
        self.x0["logweights"] = logweights.masked_fill(mask, float("-inf"))
        return self


class OfficialDXPolicy:
    # piflow_policies/dx.py DXPolicy (eps 1e-4)
    def __init__(self, out, x_src, sigma_src, segment_size, shift, mode, eps=1e-4):
        self.shift, self.mode, self.eps = shift, mode, eps
        self.sigma_src = sigma_src.reshape(-1, 1, 1, 1)
        self.raw_src = unwarp(self.sigma_src, shift)
        self.raw_dst = (self.raw_src - segment_size).clamp(min=0)
        self.segment = (self.raw_src - self.raw_dst).clamp(min=eps)
        self.x0 = x_src.unsqueeze(1) - self.sigma_src.unsqueeze(1) * out

    @staticmethod
    def interpolate(x, t):
        n = x.size(1)
        if n < 2:
            return x.squeeze(1)
        t = t.clamp(min=0, max=1) * (n - 1)
        t0 = t.floor().to(torch.long).clamp(min=0, max=n - 2)
        t1 = t0 + 1
        pair = torch.gather(x, dim=1, index=torch.stack([t0, t1], dim=1).expand(-1, -1, *x.shape[2:]))
        return (t1 - t) * pair[:, 0] + (t - t0) * pair[:, 1]

    def pi(self, x, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1)
        raw = unwarp(sigma, self.shift)
        if self.mode == "grid":
            x0 = self.interpolate(self.x0, (raw - self.raw_dst) / self.segment)
        else:
            diff = self.raw_src - raw
            basis = torch.stack([diff**i for i in range(self.x0.size(1))], dim=1)
            x0 = torch.sum(basis * self.x0, dim=1)
        return (x - x0) / sigma.clamp(min=self.eps)

    def detach(self):
        new = OfficialDXPolicy.__new__(OfficialDXPolicy)
        new.__dict__.update(self.__dict__)
        new.x0 = self.x0.detach()
        return new


def official_rollout(x, sigma_start, raw_start, raw_end, total, policy, shift):
    # piflow.py PiFlowImitationBase.policy_rollout; times (B,), sigma_start (B, 1, 1, 1)
    raw_start, raw_end = raw_start.reshape(-1, 1, 1, 1), raw_end.reshape(-1, 1, 1, 1)
    delta = raw_start - raw_end
    n = (delta * total).round().to(torch.long).clamp(min=1)
    size = delta / n
    raw, sigma = raw_start, sigma_start
    for i in range(n.max().item()):
        u = policy.pi(x, sigma)
        raw_minus = (raw - size).clamp(min=0)
        sigma_minus = warp(raw_minus, shift)
        active = n > i
        x = torch.where(active, x + u * (sigma_minus - sigma), x)
        sigma = torch.where(active, sigma_minus, sigma)
        raw = torch.where(active, raw_minus, raw)
    return x, sigma


def official_average_u(x, sigma, raw_start, raw_end, total, policy, shift, eps=1e-4):
    # piflow.py PiFlowImitationBase.policy_average_u
    small = torch.round((raw_start - raw_end) * total) < 2
    mean = local = None
    if not small.all():
        x_end, sigma_end = official_rollout(x, sigma, raw_start, raw_end, total, policy, shift)
        mean = (x - x_end) / (sigma - sigma_end).clamp(min=eps)
    if small.any():
        local = policy.pi(x, sigma)
    if mean is None:
        return local
    if local is None:
        return mean
    return torch.where(small.reshape(-1, 1, 1, 1), local, mean)


def official_segment(teacher, policy, x_src, raw_src, sigma_src, ratio, segment, cfg, get_dst=False):
    # piflow.py PiFlowImitationBase.piid_segment; segment (B,) or a float
    b, n, total, shift = x_src.shape[0], cfg["num_intermediate_states"], cfg["total_substeps"], cfg["shift"]
    segment = torch.as_tensor(segment, dtype=DT).reshape(-1)
    num_substeps = (segment * total).round().to(torch.long).clamp(min=1)
    window = torch.minimum(cfg["window_substeps"] * segment / num_substeps, segment)
    raw_dst = raw_src - segment
    detached = policy.detach()
    if isinstance(detached, OfficialGMFlowPolicy):
        detached.dropout_(cfg["gm_dropout"])
    # the official draws are float32 (torch.rand's default); the restatement computes in float64 from them
    student_iv = torch.rand((b, n)).to(DT) * ((1 - ratio) * (segment - window).unsqueeze(-1))
    student_iv = torch.diff(torch.sort(student_iv, dim=-1)[0], dim=-1, prepend=torch.zeros((b, 1), dtype=DT))
    teacher_iv = torch.sort(torch.rand((b, n - 1)).to(DT), dim=-1)[0]
    teacher_iv = torch.diff(
        teacher_iv, dim=-1, prepend=torch.zeros((b, 1), dtype=DT), append=torch.ones((b, 1), dtype=DT)
    ) * (ratio * (segment - window).unsqueeze(-1))
    x, raw, sigma = x_src, raw_src, sigma_src
    preds, targets = [], []
    for j in range(n):
        raw_a = (raw - student_iv[:, j]).clamp(min=0)
        raw_b = (raw_a - teacher_iv[:, j]).clamp(min=0)
        with torch.no_grad():
            x_a, sigma_a = official_rollout(x, sigma, raw, raw_a, total, detached, shift)
            target = teacher(x_a, sigma_a.flatten())
        preds.append(official_average_u(x_a, sigma_a, raw_a, raw_b - window, total, policy, shift))
        targets.append(target)
        sigma_b = warp(raw_b, shift).reshape(b, 1, 1, 1)
        x = x_a + target * (sigma_b - sigma_a)
        raw, sigma = raw_b, sigma_b
    # DiffusionMSELoss: mse 'flatmean' * 0.5, rescaled by a constant, then the batch mean
    loss = cfg["scale"] * 0.5 * (torch.cat(preds) - torch.cat(targets)).pow(2).flatten(1).mean(1).mean()
    x_dst = None
    if get_dst:
        with torch.no_grad():
            x_dst, _ = official_rollout(x, sigma, raw, raw_dst, total, detached, shift)
    return loss, x_dst, raw_dst


def official_policy(student, x, sigma_src, cfg):
    """The denoising output of our student, handed to the official policy class."""
    if isinstance(student, DXStudent):
        out = student.grid_output(x, sigma_src)
        return OfficialDXPolicy(out, x, sigma_src, cfg["dx_segment"], cfg["shift"], student.mode)
    means, logweights, logstds = student.gm_output(x, sigma_src)
    out = {"means": means, "logweights": logweights, "logstds": logstds.reshape(-1, 1, 1, 1, 1)}
    return OfficialGMFlowPolicy(out, x, sigma_src)


def official_data_free_loss(student, teacher, x0, ratio, cfg):
    # piflow.py PiFlowImitationDataFree.initialize_multistep and forward_train; the per-step backward
    # of base_diffusion.py train_fwd_bwd sums the step losses' gradients
    nfe, f = cfg["nfe"], cfg["final_step_size_scale"]
    x = torch.randn_like(x0)
    raw = torch.ones(x0.shape[0], dtype=DT)
    base = 1 / (nfe - 1 + f)
    total = 0.0
    for step in range(nfe):
        segment = base * f if step == nfe - 1 else base
        sigma = warp(raw, cfg["shift"]).reshape(-1, 1, 1, 1)
        policy = official_policy(student, x, sigma.flatten(), cfg)
        loss, x, raw = official_segment(teacher, policy, x, raw, sigma, ratio, segment, cfg, get_dst=True)
        total = total + loss * segment  # weighing by segment size
    return total


def official_data_loss(student, teacher, x0, ratio, cfg):
    # piflow.py PiFlowImitation.sample_t and forward_train (ContinuousTimeStepSampler: 1 - rand)
    eps, nfe = 1e-4, cfg["nfe"]
    f = max(cfg["final_step_size_scale"], eps)
    base = 1 / (nfe - (1 - f))
    raw = (1 - torch.rand((x0.shape[0],))).to(DT).clamp(min=eps)
    index = torch.ceil(raw / base + (1 - f)).clamp(min=1).clamp(max=nfe)
    raw_src = ((index - (1 - f)) * base).clamp(min=eps, max=1)
    segment = torch.where(index == 1, f * base, base)
    sigma = warp(raw_src, cfg["shift"]).reshape(-1, 1, 1, 1)
    x = (1 - sigma) * x0 + sigma * torch.randn_like(x0)  # sample_forward_diffusion, FM
    policy = official_policy(student, x, sigma.flatten(), cfg)
    loss, _, _ = official_segment(teacher, policy, x, raw_src, sigma, ratio, segment, cfg)
    return loss


class TinyNet(nn.Module):
    """A two-layer conv net ``net(x, c_noise)``; the policy heads replace its last conv."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.inp = nn.Conv2d(channels, 6, 3, padding=1)
        self.out = nn.Conv2d(6, channels, 3, padding=1)

    def forward(self, x, c_noise):
        return self.out(torch.tanh(self.inp(x) + 1e-3 * c_noise.view(-1, 1, 1, 1)))


class CurvedTeacher(nn.Module):
    """An analytic velocity field: the training loss needs only teacher(x, s)."""

    def forward(self, x, s):
        s = s.view(-1, 1, 1, 1)
        return torch.sin(x) * (1 + s) - 0.5 * x * s**2


def make_student(method: PiFlow):
    torch.manual_seed(1)
    student = method.prepare_student(VelocityModel(TinyNet())).to(DT)
    with torch.no_grad():  # gates and log-std away from their uniform / constant initialisation
        heads = [student.grid] if isinstance(student, DXStudent) else [student.logits, student.logstds]
        for head in heads:
            for p in head.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return student


def random_gm(b=3, k=4, c=2, h=3, w=3):
    g = torch.Generator().manual_seed(0)
    return {
        "means": torch.randn(b, k, c, h, w, generator=g, dtype=DT),
        "logweights": torch.randn(b, k, 1, h, w, generator=g, dtype=DT).log_softmax(dim=1),
        "logstds": 0.5 * torch.randn(b, 1, 1, 1, 1, generator=g, dtype=DT) - 1,
    }


def test_gmflow_velocity_equals_the_official_policy_pi():
    out, shift = random_gm(), 3.2
    g = torch.Generator().manual_seed(1)
    x_src, x = torch.randn(3, 2, 3, 3, generator=g, dtype=DT), torch.randn(3, 2, 3, 3, generator=g, dtype=DT)
    u_src, u = torch.tensor([1.0, 0.7, 0.4], dtype=DT), torch.tensor([0.6, 0.3, 0.05], dtype=DT)
    s_src = warp(u_src, shift)
    mixture = gm_from_velocity(out["means"], out["logstds"], out["logweights"], x_src, s_src)
    ours = GMFlowPolicy(x_src, s_src, lambda t: warp(t, shift), 128, mixture=mixture)
    official = OfficialGMFlowPolicy(out, x_src, s_src)
    torch.testing.assert_close(ours.velocity(x, u), official.pi(x, warp(u, shift)), rtol=1e-12, atol=1e-12)
    # at the step's source the official shortcut (the prior's mean) is the same posterior
    torch.testing.assert_close(ours.velocity(x_src, u_src), official.pi(x_src, s_src), rtol=1e-12, atol=1e-12)
    # and the velocity really bends away from the source's as the state moves
    assert (ours.velocity(x, u) - ours.velocity(x_src, u_src)).abs().max() > 0.1
    # the substep rollout equals policy_rollout
    ends, _ = official_rollout(x_src, s_src.view(-1, 1, 1, 1), u_src, u, 128, official, shift)
    torch.testing.assert_close(ours.advance(x_src, u_src, u), ends, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["grid", "polynomial"])
def test_dx_velocity_equals_the_official_policy_pi(mode):
    shift, segment = 3.2, 1 / 3.5
    g = torch.Generator().manual_seed(2)
    out = torch.randn(3, 10, 2, 3, 3, generator=g, dtype=DT)
    x_src, x = torch.randn(3, 2, 3, 3, generator=g, dtype=DT), torch.randn(3, 2, 3, 3, generator=g, dtype=DT)
    u_src = torch.tensor([1.0, 0.5, 1 / 7], dtype=DT)
    u = u_src - torch.tensor([0.03, 0.2, 0.1], dtype=DT)
    s_src = warp(u_src, shift)
    x0 = x_src.unsqueeze(1) - s_src.view(-1, 1, 1, 1, 1) * out
    kw = {"u_src": u_src, "segment": segment, "mode": mode, "eps": 1e-4, "mean_eps": 1e-4}
    ours = DXPolicy(x_src, s_src, lambda t: warp(t, shift), 128, grid=x0, **kw)
    official = OfficialDXPolicy(out, x_src, s_src, segment, shift, mode)
    torch.testing.assert_close(ours.velocity(x, u), official.pi(x, warp(u, shift)), rtol=1e-10, atol=1e-10)
    ends, _ = official_rollout(x_src, s_src.view(-1, 1, 1, 1), u_src, u.clamp(min=0), 128, official, shift)
    torch.testing.assert_close(ours.advance(x_src, u_src, u.clamp(min=0)), ends, rtol=1e-10, atol=1e-10)


CASES = {
    # the ImageNet recipe (gm*_k32_imagenet_piid_*): 2 states, no window, no teacher mixing, x3
    "imagenet-data-free": dict(policy="gmflow", train_nfes=[2], data_free=True, share=0.0),
    "imagenet-data": dict(policy="gmflow", train_nfes=[2], data_free=False, share=0.0),
    # the FLUX.1 recipe (gmflux_k8_*_piid_4step): 4 steps, last half, shift 3.2, window 3, mixing, x30
    "flux-data-free": dict(
        policy="gmflow",
        train_nfes=[4],
        final_step_scale=0.5,
        shift=3.2,
        intermediate_states=4,
        window_substeps=3,
        component_dropout=0.1,
        loss_scale=30.0,
        data_free=True,
        share=0.6,
    ),
    "flux-data": dict(
        policy="gmflow",
        train_nfes=[4],
        final_step_scale=0.5,
        shift=3.2,
        intermediate_states=4,
        window_substeps=3,
        component_dropout=0.1,
        loss_scale=30.0,
        data_free=False,
        share=0.3,
    ),
    # dxflux_n10_piid_4step and dxqwen_p10_piid_4step
    "dx-grid": dict(
        policy="dx",
        train_nfes=[4],
        final_step_scale=0.5,
        shift=3.2,
        intermediate_states=4,
        window_substeps=3,
        loss_scale=30.0,
        data_free=False,
        share=0.5,
    ),
    "dx-polynomial-data-free": dict(
        policy="dx",
        dx_mode="polynomial",
        train_nfes=[2],
        shift=3.2,
        intermediate_states=3,
        window_substeps=3,
        data_free=True,
        share=0.0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_loss_and_gradient_equal_the_official_pi_id(case):
    options = dict(CASES[case])
    share = options.pop("share")
    method = PiFlow(components=3, grid_points=4, teacher_mix_steps=10, **options)
    student, teacher = make_student(method), CurvedTeacher()
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    step = round((1 - share) * 10)
    assert method.teacher_share(step) == pytest.approx(share)
    torch.manual_seed(7)
    ours = method.loss("student", x0, teacher, student, step)["loss"]
    ours_grad = torch.autograd.grad(ours, list(student.parameters()), allow_unused=True)
    cfg = {
        "nfe": method.train_nfes[0],
        "final_step_size_scale": method.final_step_scale,
        "shift": method.shift,
        "num_intermediate_states": method.intermediate_states,
        "window_substeps": method.window_substeps,
        "total_substeps": 128,
        "gm_dropout": method.component_dropout,
        "scale": method.loss_scale,
        "dx_segment": 1 / (method.train_nfes[0] - 1 + method.final_step_scale),
    }
    torch.manual_seed(7)
    official = official_data_free_loss if method.data_free else official_data_loss
    theirs = official(student, teacher, x0, share, cfg)
    theirs_grad = torch.autograd.grad(theirs, list(student.parameters()), allow_unused=True)
    assert math.isfinite(float(ours.detach())) and float(ours.detach()) > 1e-3
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert any(g is not None and g.abs().max() > 0 for g in ours_grad)
    for a, b in zip(ours_grad, theirs_grad, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:  # atol: rounding on elements that cancel, relative to the tensor's largest
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7 * float(b.abs().max()))


@pytest.mark.parametrize("policy, nfe, final", [("gmflow", 2, 1.0), ("gmflow", 4, 0.5), ("dx", 3, 0.5)])
def test_sampling_equals_the_official_forward_test(policy, nfe, final):
    # piflow.py PiFlowImitationBase.forward_test with FlowMapSDEScheduler (h = 0: the ODE)
    shift = 3.2
    method = PiFlow(policy=policy, components=3, grid_points=4, train_nfes=[nfe], final_step_scale=final, shift=shift)
    student = make_student(method)
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    ours = method.sample(student, noise, nfe)
    raw = torch.linspace(1, (final - 1) / (nfe + final - 1), nfe + 1, dtype=DT)[:-1].clamp(min=0)
    sigmas = torch.cat([warp(raw, shift), torch.zeros(1, dtype=DT)])
    cfg = {"shift": shift, "dx_segment": 1 / (nfe - 1 + final)}
    x = noise
    with torch.no_grad():
        for i in range(nfe):
            s_src, s_dst = sigmas[i].expand(2), sigmas[i + 1].expand(2)
            official = official_policy(student, x, s_src, cfg)
            x, _ = official_rollout(
                x, s_src.view(-1, 1, 1, 1), unwarp(s_src, shift), unwarp(s_dst, shift), 128, official, shift
            )
    torch.testing.assert_close(ours, x, rtol=1e-8, atol=1e-8)
