"""ArcFlow parity: the closed-form step and the training loss (its raw-time segment, state draws,
window, teacher interleave, component dropout and step weights) against float64 restatements of the
official code, pnotp/ArcFlow @ 4294909 (lakonlab/models/diffusions/arcflow.py and policies/arcflow.py).
"""

import math

import pytest
import torch
from torch import nn

from distill.core.imitation import window_length
from distill.core.momentum import Momentum, advance
from distill.methods.arcflow import ArcFlow
from distill.nets.velocity import VelocityModel
from distill.students.momentum import MomentumStudent

SHIFT = 3.2
DT = torch.float64


def warp(u, shift=SHIFT):
    # pnotp/ArcFlow lakonlab/models/diffusions/sampler.py:47-49 (ContinuousTimeStepSampler.warp_t)
    return shift * u / (1 + (shift - 1) * u)


def official_momentum_integration(sigma_src, x, sigma_start, raw_end, policy, eps=1e-4):
    # pnotp/ArcFlow lakonlab/models/diffusions/arcflow.py:28-79; times (B, 1, 1, 1)
    b = x.shape[0]
    sigma_end = warp(raw_end).reshape(b, 1, 1, 1)
    means, log_gammas, logweights = policy["means_u"], policy["loggammas"], policy["logweights"]
    dt_past = (sigma_src - sigma_start).unsqueeze(1)
    dt_step = (sigma_start - sigma_end).unsqueeze(1)
    decay = torch.exp(log_gammas * dt_past)
    bs, _, c, h, w = decay.shape
    decay = torch.cat([torch.ones((bs, 1, c, h, w), dtype=DT), decay], dim=1)
    v_at_a = means * decay
    arg = log_gammas * dt_step
    sign = torch.sign(arg)
    sign[sign == 0] = 1
    arg = sign * torch.clamp(arg.abs(), min=eps)
    step_factor = torch.cat([torch.ones((bs, 1, c, h, w), dtype=DT), torch.expm1(arg) / arg], dim=1)
    weights = torch.softmax(logweights, dim=1)
    return x - (weights * v_at_a * dt_step * step_factor).sum(dim=1), sigma_end


def official_dropout(policy, p):
    # pnotp/ArcFlow lakonlab/models/diffusions/policies/arcflow.py:96-106 (dropout_), ndim 4
    if p <= 0 or p >= 1:
        return policy
    logweights = policy["logweights"]
    mask = torch.rand((*logweights.shape[:2], 1, 1, 1)) < p
    mask &= ~mask.all(dim=1, keepdim=True)
    return {**policy, "logweights": logweights.masked_fill(mask, float("-inf"))}


def official_segment(teacher, policy, x_src, raw_src, sigma_src, ratio, segment, cfg):
    # pnotp/ArcFlow lakonlab/models/diffusions/arcflow.py:120-209 (piid_segment_momentum), eps 1e-4
    b, n = x_src.shape[0], cfg["num_intermediate_states"]
    num_substeps = max(1, round(segment * cfg["total_substeps"]))
    window = min(cfg["window_substeps"] * segment / num_substeps, segment)
    detached = official_dropout({k: v.detach() for k, v in policy.items()}, cfg["gm_dropout"])
    # the official draws are float32 (torch.rand's default); the restatement computes in float64 from them
    student_iv = torch.rand((b, n)).to(DT) * ((1 - ratio) * (segment - window))
    student_iv = torch.diff(torch.sort(student_iv, dim=-1)[0], dim=-1, prepend=torch.zeros((b, 1), dtype=DT))
    teacher_iv = torch.sort(torch.rand((b, n - 1)).to(DT), dim=-1)[0]
    teacher_iv = torch.diff(
        teacher_iv, dim=-1, prepend=torch.zeros((b, 1), dtype=DT), append=torch.ones((b, 1), dtype=DT)
    )
    teacher_iv = teacher_iv * (ratio * (segment - window))
    x, raw, sigma = x_src, raw_src, sigma_src
    preds, targets = [], []
    for j in range(n):
        raw_a = (raw - student_iv[:, j]).clamp(min=0)
        raw_b = (raw_a - teacher_iv[:, j]).clamp(min=0)
        with torch.no_grad():
            x_a, sigma_a = official_momentum_integration(sigma_src, x, sigma, raw_a, detached)
            target = teacher(x_a, sigma_a.flatten())
        # policy_average_u_momentum (arcflow.py:81-110): the mean velocity over [raw_b - window, raw_a]
        assert (torch.round((raw_a - (raw_b - window)) * cfg["total_substeps"]) >= 2).all()
        x_end, sigma_end = official_momentum_integration(sigma_src, x_a, sigma_a, raw_b - window, policy)
        preds.append((x_a - x_end) / (sigma_a - sigma_end).clamp(min=1e-4))
        targets.append(target)
        sigma_b = warp(raw_b).reshape(b, 1, 1, 1)
        x = x_a + target * (sigma_b - sigma_a)
        raw, sigma = raw_b, sigma_b
    # DiffusionMSELoss (lakonlab/models/losses/diffusion_loss.py:82): reduction 'flatmean', then mean,
    # halved, and rescaled by the constant 30
    loss = 30.0 * 0.5 * (torch.cat(preds) - torch.cat(targets)).pow(2).flatten(1).mean(1).mean()
    with torch.no_grad():
        x_dst, _ = official_momentum_integration(sigma_src, x, sigma, raw_src - segment, detached)
    return loss, x_dst


def official_data_free_loss(student, teacher, x0, nfe, ratio, cfg):
    # pnotp/ArcFlow lakonlab/models/diffusions/arcflow.py:343-420 (ArcFlowImitationDataFree), timestep_ratio 1
    x = torch.randn_like(x0)
    raw = torch.ones(x0.shape[0], dtype=DT)
    segment = 1 / nfe  # base_segment_size = 1 / (nfe - 1 + timestep_ratio)
    total = 0.0
    for _ in range(nfe):
        sigma = warp(raw).reshape(-1, 1, 1, 1)
        m = student.mixture(x, sigma.flatten())
        policy = {"means_u": m.means, "logweights": m.weights.log(), "loggammas": m.rates[:, 1:]}
        loss, x = official_segment(teacher, policy, x, raw, sigma, ratio, segment, cfg)
        total = total + loss * segment  # arcflow.py:403, weighing by segment size
        raw = raw - segment
    return total


class TinyNet(nn.Module):
    """A two-layer conv net ``net(x, c_noise)``; the momentum heads replace its last conv."""

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


def student_and_inputs(k: int = 3):
    torch.manual_seed(1)
    student = MomentumStudent(VelocityModel(TinyNet()), components=k, bias_noise=0.05).to(DT)
    with torch.no_grad():  # logits and rates away from their zero / constant initialisation
        for p in (*student.logits.parameters(), *student.rates.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    return student, torch.zeros(3, 2, 4, 4, dtype=DT)


def random_policy(b=2, k=4, c=2, h=3, w=3):
    g = torch.Generator().manual_seed(0)
    return {
        "means_u": torch.randn(b, k, c, h, w, generator=g, dtype=DT),
        "logweights": torch.randn(b, k, 1, h, w, generator=g, dtype=DT),
        "loggammas": 2 * torch.randn(b, k - 1, 1, h, w, generator=g, dtype=DT),
    }


def test_closed_form_step_equals_the_official_momentum_integration():
    policy = random_policy()
    m = Momentum(
        policy["means_u"],
        torch.softmax(policy["logweights"], dim=1),
        torch.cat([torch.zeros_like(policy["loggammas"][:, :1]), policy["loggammas"]], dim=1),
    )
    x = torch.randn(2, 2, 3, 3, dtype=DT)
    raw_src, raw_a, raw_b = (
        torch.tensor([1.0, 0.5], dtype=DT),
        torch.tensor([0.8, 0.3], dtype=DT),
        torch.tensor([0.55, 0.0], dtype=DT),
    )
    s_src, s_a, s_b = warp(raw_src), warp(raw_a), warp(raw_b)
    expected, _ = official_momentum_integration(s_src.view(-1, 1, 1, 1), x, s_a.view(-1, 1, 1, 1), raw_b, policy)
    # the official clamp |u| >= 1e-4 is exact here: every gamma * step is far from 0
    assert (policy["loggammas"].abs() * (s_a - s_b).min()).min() > 1e-3
    torch.testing.assert_close(advance(x, m, s_src, s_a, s_b), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "total_substeps, nfe, expected", [(128, 2, 3 / 128), (128, 3, 3 / 129), (128, 1, 3 / 128), (4, 4, 0.25)]
)
def test_window_is_measured_in_raw_substeps_as_official(total_substeps, nfe, expected):
    # pnotp/ArcFlow lakonlab/models/diffusions/arcflow.py:134-137
    segment = torch.tensor([1 / nfe], dtype=torch.float32)
    substeps = (segment * total_substeps).round().to(torch.long).clamp(min=1)
    official = float(torch.minimum(3 * segment / substeps, segment))
    assert window_length(1 / nfe, 3, total_substeps) == pytest.approx(official, rel=1e-6)
    assert window_length(1 / nfe, 3, total_substeps) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("nfe, share, dropout", [(2, 0.0, 0.1), (2, 0.6, 0.5), (3, 1.0, 0.0)])
def test_training_loss_and_gradient_equal_the_official_data_free_rollout(nfe, share, dropout):
    student, x0 = student_and_inputs()
    teacher = CurvedTeacher()
    method = ArcFlow(
        components=3,
        train_nfes=[nfe],
        shift=SHIFT,
        intermediate_states=4,
        component_dropout=dropout,
        loss_scale=30.0,
        teacher_mix_steps=10,
    )
    step = round((1 - share) * 10)
    assert method.teacher_share(step) == pytest.approx(share)
    torch.manual_seed(7)
    ours = method.loss("student", x0, teacher, student, step)["loss"]
    ours_grad = torch.autograd.grad(ours, list(student.parameters()), allow_unused=True)
    cfg = {"num_intermediate_states": 4, "total_substeps": 128, "window_substeps": 3, "gm_dropout": dropout}
    torch.manual_seed(7)
    theirs = official_data_free_loss(student, teacher, x0, nfe, share, cfg)
    theirs_grad = torch.autograd.grad(theirs, list(student.parameters()), allow_unused=True)
    assert math.isfinite(float(ours.detach())) and float(ours.detach()) > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    for a, b in zip(ours_grad, theirs_grad, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_two_step_losses_weigh_equally_in_raw_time_with_shift():
    """arcflow.py:384-403: at 2 NFE both steps have raw length 0.5, whatever the shift (3.2 here);
    the shifted-sigma lengths would be 0.238 and 0.762."""
    method = ArcFlow(components=2, train_nfes=[2], shift=SHIFT)
    seen = []

    def segment(x, u_src, length, share, student, teacher):
        seen.append((u_src, length))
        return torch.tensor(1.0 + len(seen)), x  # step errors 2 and 3

    method.segment = segment
    student = MomentumStudent(VelocityModel(TinyNet()), components=2)
    loss = method.loss("student", torch.zeros(1, 2, 4, 4), CurvedTeacher(), student, step=0)["loss"]
    assert seen == [(1.0, 0.5), (0.5, 0.5)]
    assert float(loss) == pytest.approx(0.5 * (0.5 * 2 + 0.5 * 3))  # DiffusionMSELoss halves the loss
