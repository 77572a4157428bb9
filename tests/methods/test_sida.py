"""SiDA: its options, which networks each phase trains, its schedule and gradient bound in the
Lightning loop, its discriminator learning on the ring mixture, and learning the ring in one step."""

import pytest
import torch

from distill.core.errors import ConfigError
from distill.lit.distill import DistillModule
from distill.methods import SiDA
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher
from tests.helpers.modules import fit
from tests.methods.learning import (
    has_gradients,
    one_step_ring_quality_before_after,
    regress_velocity,
    ring_teacher_and_data,
    tiny_unet_teacher,
    train_phases,
)


def test_options_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match="generator_start_step=10, gan_start_step=5"):
        SiDA(generator_start_step=10, gan_start_step=5)
    with pytest.raises(ConfigError, match="gan_weight=-1"):
        SiDA(gan_weight=-1)
    with pytest.raises(ConfigError, match="method.objective.tmax=0"):  # SiD's own checks still apply
        SiDA(tmax=0)


def test_each_phase_reaches_only_its_own_networks_and_reads_real_data():
    teacher = tiny_unet_teacher()
    student = VelocityModel(teacher.model.net.__class__(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4))
    method = SiDA()
    method.attach(teacher, student)
    assert method.data_role == "real"
    x0 = torch.randn(4, 1, 8, 8)
    terms = method.loss("fake_score", x0, teacher, student, 0)
    terms["loss"].backward()
    assert has_gradients(method.fake_score) and not has_gradients(student)
    assert set(terms) == {"loss", "score", "gan_d", "p_real", "p_fake"}
    method.fake_score.zero_grad(set_to_none=True)
    method.loss("student", x0, teacher, student, method.gan_start_step)["loss"].backward()
    assert has_gradients(student) and not has_gradients(method.fake_score)
    assert not any(p.requires_grad for p in teacher.parameters())
    # the real images matter to the fake score's update only through the discriminator
    torch.manual_seed(0)
    a = method.loss("fake_score", x0, teacher, student, 0)
    torch.manual_seed(0)
    b = method.loss("fake_score", x0 + 1, teacher, student, 0)
    assert a["score"] == b["score"] and a["gan_d"] != b["gan_d"]


def test_the_loop_waits_for_the_fake_score_and_bounds_its_gradient_elementwise(tmp_path):
    """SGD at lr 1 moves each weight by its (bounded) gradient: the fake score's by 1e-4 at most, the
    student's (unbounded) by more, and the student not at all before ``generator_start_step``."""
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=32, depth=1)), (2,))
    method = SiDA(generator_start_step=2, gan_start_step=2, fake_score_grad_value_clip=1e-4)
    module = DistillModule(teacher, student_from_teacher(teacher.model), method, lambda p: torch.optim.SGD(p, lr=1.0))
    fake, student = (
        [p.clone() for p in method.fake_score.parameters()],
        [p.clone() for p in module.student.parameters()],
    )
    fit(module, 1, tmp_path)  # one batch: the fake score alone
    moved = max((a - b).abs().max().item() for a, b in zip(method.fake_score.parameters(), fake, strict=True))
    assert moved == pytest.approx(1e-4, rel=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(module.student.parameters(), student, strict=True))
    fit(module, 3, tmp_path)  # two more batches: the fake score alone, then the fake score and the student
    assert max((a - b).abs().max().item() for a, b in zip(module.student.parameters(), student, strict=True)) > 1e-3


def test_the_fake_score_encoder_tells_data_from_generator_samples_and_the_gan_loss_fools_it():
    """While the generator waits, the channel mean of the fake-score net's last block learns to
    separate ring data from the rough generator's blurred samples (D(real) 0.52 -> 0.83, D(fake)
    0.53 -> 0.22 in 50 steps); then 10 generator steps on the GAN loss alone (SiD's term scaled
    away, the discriminator held) raise D(fake) to 0.88."""
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    student = VelocityModel(TimeMLP((2,), width=64, depth=2))
    regress_velocity(student, student.parameters(), teacher, data, 300)
    method = SiDA(generator_start_step=10**6, gan_start_step=10**6, generator_loss_scale=1e-9)
    train_phases(method, teacher, student, data, 50, 1e-3)
    before = method.loss("fake_score", data[:2048], teacher, student, 0)
    assert before["p_real"] > 0.7 and before["p_fake"] < 0.35
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.0, 0.99))
    for _ in range(10):
        opt.zero_grad()
        method.loss("student", data[:256], teacher, student, 10**6)["loss"].backward()
        opt.step()
    after = method.loss("fake_score", data[:2048], teacher, student, 0)
    assert after["p_fake"] > before["p_fake"] + 0.1


@pytest.mark.slow  # 10 s; the fast test above covers the GAN, test_sid.py the SiD term it joins
def test_sida_learns_the_ring_mixture_in_one_step():
    """SiDA's full loss, its warm-ups shortened (the generator from step 20, the GAN from 40): sliced
    Wasserstein 0.81 -> 0.24 in 300 steps, as SiD (0.25), every mode kept."""
    method = SiDA(generator_start_step=20, gan_start_step=40)
    (sw_before, _, near_before), (sw_after, covered, near_after) = one_step_ring_quality_before_after(method)
    assert sw_after < 0.35 * sw_before
    assert covered == 1.0
    assert near_after > near_before + 0.25
