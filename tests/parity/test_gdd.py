"""GDD / GDD-I parity: the generator g(80 z, 80), the non-saturating G and D losses summed over
heads, lazy R1 and the GDD-I freeze rule, against float64 restatements of the official code,
Zyriix/GDD @ e9267e8 (training/loss.py, training/training_loop.py), on a tiny random EDM network.

The discriminator itself differs by design (the frozen teacher's encoder with small heads instead of
GDD's projected GAN; the paper configs say so), so the losses are compared on the project's
discriminator: ``run_D`` below is ``method.discriminate``.
"""

import copy

import torch
import torch.nn.functional as F

from distill.methods import GDD
from distill.nets.freezing import frozen_parameter_names
from distill.teachers.edm import edm_teacher
from tests.teachers.edm_pickles import tiny_edm

DT = torch.float64


def official_frozen(named_parameters, freeze_layer=("conv", "proj")):
    # Zyriix/GDD training/training_loop.py:163-169 (train.py:246-247: --freeze=1 -> ['conv', 'proj']):
    # these parameters are left out of the optimizer
    return {
        k
        for k, v in named_parameters
        if ("block" in k or "up" in k or "down" in k or "in" in k) and any(fl in k for fl in freeze_layer)
    }


def setup(**kwargs):
    net, _ = tiny_edm("song")
    teacher = edm_teacher(net.double(), {})
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = GDD(heads_reduction="sum", **kwargs)
    method.attach(teacher, student)
    for p in method.heads.parameters():  # non-trivial logits (the heads run in float32)
        torch.nn.init.normal_(p, std=0.3)
    return method, teacher, student


def official_run_G(student, z):
    # Zyriix/GDD training/loss.py:180-184 and :216-219: g(z * 80, 80)
    t = torch.full((z.shape[0],), 80.0, dtype=DT)
    return student.net(z * t.reshape(-1, 1, 1, 1), t)


def test_gdd_freeze_rule_is_the_official_optimizer_rule_on_song_unet():
    net, _ = tiny_edm("song")
    teacher = edm_teacher(net, {})
    ours = frozen_parameter_names(teacher.model, "gdd")
    official = official_frozen(net.named_parameters())
    assert any("down" in k or "up" in k for k in official - {k for k in official if "block" in k or "in" in k})
    assert ours == {f"net.{k}" for k in official}
    sizes = dict(teacher.model.named_parameters())
    frozen = sum(sizes[k].numel() for k in ours) / sum(p.numel() for p in teacher.model.parameters())
    assert frozen == sum(p.numel() for k, p in net.named_parameters() if k in official) / sum(
        p.numel() for p in net.parameters()
    )


def test_generator_loss_is_gdds_sum_over_heads():
    method, teacher, student = setup()
    x0 = torch.randn(3, 1, 8, 8, dtype=DT).clamp(-1, 1)
    torch.manual_seed(0)
    ours = method.loss("student", x0, teacher, student, 0)["loss"]
    torch.manual_seed(0)
    z = torch.randn_like(x0)  # loss.py:218
    g_logits = method.discriminate(official_run_G(student, z), teacher)  # loss.py:235-236
    official = sum(F.softplus(-glogit).mean() for glogit in g_logits)  # loss.py:238-239
    assert len(g_logits) > 1
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=0)


def test_discriminator_loss_and_lazy_r1_are_gdds():
    method, teacher, student = setup(r1_gamma=0.5, r1_every=16)
    images = torch.randn(3, 1, 8, 8, dtype=DT).clamp(-1, 1)
    torch.manual_seed(1)
    plain = method.loss("discriminator", images, teacher, student, 0)  # step 0: no R1
    torch.manual_seed(1)
    z = torch.randn_like(images)
    with torch.no_grad():
        gen_v = official_run_G(student, z)  # loss.py:268-269
    d_gen_logits = method.discriminate(gen_v, teacher)
    d_gen_loss = sum(F.softplus(dgenlogit).mean() for dgenlogit in d_gen_logits)  # loss.py:272-273
    d_gt_logits = method.discriminate(images, teacher)
    d_gt_loss = sum(F.softplus(-dgtlogit).mean() for dgtlogit in d_gt_logits)  # loss.py:281-282
    assert "r1" not in plain
    torch.testing.assert_close(plain["loss"], d_gen_loss + d_gt_loss, rtol=1e-10, atol=0)

    torch.manual_seed(1)
    lazy = method.loss("discriminator", images, teacher, student, 15)  # the 16th D step takes R1
    # loss.py:296-313 with gain = r1_interval = 16 (training_loop.py:267-271)
    real_images = images.clone().detach().requires_grad_(True)
    d_r1_logits = method.discriminate(real_images, teacher)
    sum_r1_logits = sum(dr1logit.sum() for dr1logit in d_r1_logits)
    r1_grads = torch.autograd.grad(outputs=[sum_r1_logits], inputs=[real_images], create_graph=True)[0]
    r1_loss = r1_grads.square().sum(axis=[1, 2, 3]) * 0.5 / 2
    official_r1 = r1_loss.mean().mul(16)
    assert official_r1 > 0
    torch.testing.assert_close(lazy["r1"], official_r1.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(lazy["loss"], d_gen_loss + d_gt_loss + official_r1, rtol=1e-9, atol=0)
