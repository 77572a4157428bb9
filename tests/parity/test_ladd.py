"""LADD parity: the discriminator's and the generator's steps against float64 restatements of
NVlabs/FastGen's ``LADDModel`` (fastgen/methods/distribution_matching/ladd.py: the update schedule of
``single_train_step``, ``_student_update_step``, ``_compute_real_feat``, ``_compute_r1_regularization``,
``_discriminator_update_step``; fastgen/methods/common_loss.py ``gan_loss_generator``,
``gan_loss_discriminator``), with FastGen's flow-matching forward process ``x_t = (1 - t) x + t eps``.

Both sides read the same teacher features through the same heads and draw the same random numbers:
the test hands both the same noises and times, in the order FastGen draws them.
"""

from collections import deque

import pytest
import torch
import torch.nn.functional as F

from distill.methods import LADD
from distill.nets.discriminator import head_for
from tests.parity.nets import Velocity

DT = torch.float64


def forward_process(x, eps, t):  # FastGen's RF noise scheduler
    return (1 - t[:, None]) * x + t[:, None] * eps


def gan_loss_generator(fake_logits):  # common_loss.py:106-119
    assert fake_logits.ndim == 2
    return F.softplus(-fake_logits).mean()


def gan_loss_discriminator(real_logits, fake_logits):  # common_loss.py:122-135
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def official_discriminator_step(gen_data, real, t, eps, t_real, eps_real, alpha_noise, feat, disc, cfg):
    # ladd.py _discriminator_update_step with _compute_real_feat and _compute_r1_regularization
    fake_feat = feat(forward_process(gen_data, eps, t), t)
    if cfg["same"]:
        t_real, eps_real = t, eps
    real_feat = feat(forward_process(real, eps_real, t_real), t_real)
    real_logit = disc(real_feat)
    loss = gan_loss_discriminator(real_logit, disc(fake_feat))
    if cfg["r1_weight"] > 0:
        alpha_feat = feat(real + cfg["alpha"] * alpha_noise, t_real)  # the clean images, shaken
        loss = loss + cfg["r1_weight"] * F.mse_loss(real_logit, disc(alpha_feat), reduction="mean")
    return loss


def official_student_step(gen_data, t, eps, feat, disc):
    return gan_loss_generator(disc(feat(forward_process(gen_data, eps, t), t)))


class Features(torch.nn.Module):
    """A frozen float64 'teacher' whose one feature map is a smooth function of (x_t, t)."""

    def __init__(self):
        super().__init__()
        self.net = Velocity(3, seed=7).requires_grad_(False)

    def forward(self, x, t):
        return torch.tanh(self.net(x, t))


class Heads(torch.nn.Module):
    """One float64 head over the one feature map (FeatureHeads computes in float32)."""

    def __init__(self):
        super().__init__()
        self.head = head_for((3,), width=16).double()

    def forward(self, features):
        return [self.head(f) for f in features]


def setup(**options):
    method = LADD(**options)
    teacher = Features()
    method.features = lambda x_s, s, _teacher: [teacher(x_s, s)]
    method.heads = Heads()
    disc = lambda features: method.heads.head(features).reshape(len(features), -1)  # noqa: E731  FastGen's (B, 1)
    return method, teacher, disc


def queue_draws(monkeypatch, method, noises, times):
    """Hand ``torch.randn_like`` and ``method.gan_times`` the given tensors, in order."""
    noises, times = deque(noises), deque(times)
    monkeypatch.setattr(torch, "randn_like", lambda like, **_: noises.popleft())
    monkeypatch.setattr(method, "gan_times", lambda n, like: times.popleft())
    return noises, times


@pytest.mark.parametrize(
    "same,r1_weight", [(False, 0.0), (True, 0.0), (False, 100.0), (True, 0.1)], ids=["own", "same", "r1", "same_r1"]
)
def test_discriminator_step_matches_fastgen(monkeypatch, same, r1_weight):
    torch.manual_seed(0)
    method, teacher, disc = setup(same_time_and_noise=same, r1_weight=r1_weight, r1_alpha=0.1)
    student = Velocity(3, seed=1)
    real, z, eps, eps_real, alpha_noise = (torch.randn(16, 3, dtype=DT) for _ in range(5))
    t, t_real = torch.rand(16, dtype=DT), torch.rand(16, dtype=DT)
    gen_data = z - student(z, torch.ones(16, dtype=DT))  # the one-step generator at pure noise
    draws = [z, eps] + ([] if same else [eps_real]) + ([alpha_noise] if r1_weight else [])
    noises, times = queue_draws(monkeypatch, method, draws, [t] + ([] if same else [t_real]))
    ours = method.loss("discriminator", real, None, student, step=1)["loss"]
    assert not noises and not times  # every draw used, none more
    cfg = {"same": same, "r1_weight": r1_weight, "alpha": 0.1}
    official = official_discriminator_step(
        gen_data.detach(), real, t, eps, t_real, eps_real, alpha_noise, teacher, disc, cfg
    )
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
    for p in method.heads.parameters():  # and the same gradient into the heads
        (g_ours,) = torch.autograd.grad(ours, p, retain_graph=True)
        (g_official,) = torch.autograd.grad(official, p, retain_graph=True)
        torch.testing.assert_close(g_ours, g_official, rtol=1e-10, atol=1e-12)


def test_student_step_matches_fastgen_and_only_the_generator_gets_a_gradient(monkeypatch):
    torch.manual_seed(0)
    method, teacher, disc = setup()
    student = Velocity(3, seed=1)
    z, eps = torch.randn(16, 3, dtype=DT), torch.randn(16, 3, dtype=DT)
    t = torch.rand(16, dtype=DT)
    queue_draws(monkeypatch, method, [z, eps], [t])
    ours = method.loss("student", torch.zeros(16, 3, dtype=DT), None, student, step=0)["loss"]
    official = official_student_step(z - student(z, torch.ones(16, dtype=DT)), t, eps, teacher, disc)
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
    ours.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in method.heads.parameters())  # the heads are frozen in G's step


def test_update_schedule_and_time_law_match_fastgen():
    method = LADD(student_update_freq=5, time_min=0.001, time_max=0.999)
    # single_train_step: iteration % student_update_freq == 0 -> the student's step
    assert [p for step in range(11) for p in method.phases(step)] == [
        "student" if step % 5 == 0 else "discriminator" for step in range(11)
    ]
    s = method.gan_times(200_000, torch.zeros(1, dtype=DT))  # sample_t "uniform" on [min_t, max_t]
    assert float(s.min()) >= 0.001 and float(s.max()) <= 0.999
    assert float(s.mean()) == pytest.approx(0.5, abs=2e-3) and float(s.var()) == pytest.approx(0.998**2 / 12, rel=1e-2)
