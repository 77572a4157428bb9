"""DMD2 / DMD: the distribution-matching gradient, the update alternation, the GAN head on the
fake-score features, backward simulation, and learning the ring mixture in one step."""

import copy

import pytest
import torch
from torch import nn

from distill.core.dmd import dm_gradient, dm_loss, flow_score_loss
from distill.core.grids import make_grid
from distill.core.samplers import sample_heun
from distill.methods import DMD2
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.generator import backward_simulate, sampling_times
from distill.teachers import Teacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    has_gradients,
    one_step_ring_quality_before_after,
    ring_teacher_and_data,
    tiny_unet_teacher,
    train_phases,
)


def mlp(width: int = 32, depth: int = 2) -> nn.Module:
    return VelocityModel(TimeMLP((2,), width=width, depth=depth))


# --- the gradient -------------------------------------------------------------------------------
def test_dm_gradient_is_the_normalised_score_difference():
    x = torch.tensor([[1.0, 3.0], [0.0, 2.0]])
    real = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    fake = torch.tensor([[2.0, 1.0], [1.0, 5.0]])
    # mean |x - real| per sample: (1 + 2) / 2 = 1.5 and (1 + 1) / 2 = 1
    expected = torch.tensor([[2 / 1.5, 0.0], [0.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(dm_gradient(x, real, fake), expected)


def test_dm_gradient_zeroes_non_finite_entries():
    x = torch.zeros(1, 2)
    grad = dm_gradient(x, torch.zeros(1, 2), torch.tensor([[1.0, float("nan")]]))  # scale 0: inf and nan
    assert torch.isfinite(grad).all() and grad.abs().sum() == 0


def test_dm_loss_gradient_is_grad_over_numel():
    x = torch.randn(3, 4, requires_grad=True)
    grad = torch.randn(3, 4, dtype=torch.float64)
    dm_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, (grad / x.numel()).float())


def test_flow_score_loss_is_zero_for_the_exact_velocity():
    x0, eps = torch.randn(5, 2), torch.randn(5, 2)
    assert flow_score_loss(eps - x0, x0, eps) == 0
    assert flow_score_loss(torch.zeros(5, 2), x0, eps) > 0


def test_dm_term_gives_zero_generator_gradient_when_fake_equals_real():
    """docs/methods.md 12.4 (c): same network for both scores -> no distribution-matching push."""
    torch.manual_seed(0)
    teacher = Teacher(mlp(), (2,))
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = DMD2(generator_times=[1.0])
    method.attach(teacher, student)  # the fake score starts as a copy of the teacher's network
    x_hat = student(torch.randn(64, 2), torch.ones(64))
    method.dm_term(x_hat, teacher).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(g.abs().max() == 0 for g in grads)


# --- the update alternation ----------------------------------------------------------------------


def test_ttur_steps_the_generator_every_ratio_batches():
    method = DMD2(fake_updates_per_generator=3)
    assert [tuple(method.phases(s)) for s in range(4)] == [
        ("fake_score", "student"),
        ("fake_score",),
        ("fake_score",),
        ("fake_score", "student"),
    ]


def test_each_phase_reaches_only_its_own_networks():
    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = DMD2(gan_weight=1e-2)
    method.attach(teacher, student)
    x0 = torch.randn(4, 1, 8, 8)
    nets = {"student": student, "fake_score": method.fake_score, "heads": method.gan_heads, "teacher": teacher}
    expected = {"fake_score": {"fake_score", "heads"}, "student": {"student"}}
    for phase, owners in expected.items():
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        method.loss(phase, x0, teacher, student, 0)["loss"].backward()
        assert {name for name, net in nets.items() if has_gradients(net)} == owners, phase
    assert all(p.requires_grad for p in method.fake_score.parameters())  # unfrozen after the G step


def test_gan_head_reads_the_fake_score_bottleneck():
    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = DMD2(gan_weight=1e-2)
    method.attach(teacher, student)
    x = torch.randn(4, 1, 8, 8)
    torch.manual_seed(1)
    before = method.gan_logits(x, teacher)[0]
    with torch.no_grad():  # change only the fake net's middle block: the logits must follow
        for p in method.fake_score.net.model.mid_block.parameters():
            p.add_(0.5)
    torch.manual_seed(1)
    after = method.gan_logits(x, teacher)[0]
    assert not torch.allclose(before, after)
    method.fake_score.zero_grad(set_to_none=True)
    after.sum().backward()  # the forward stops at the bottleneck: the decoder takes no part
    model = method.fake_score.net.model
    assert has_gradients(model.down_blocks) and has_gradients(model.mid_block)
    assert not has_gradients(model.up_blocks) and not has_gradients(model.conv_out)


def test_gan_real_batch_mixes_teacher_samples_in_a_fixed_share():
    teacher = Teacher(mlp(), (2,))
    method = DMD2(teacher_sample_fraction=0.25)
    x0 = torch.full((8, 2), 100.0)  # far from anything the teacher samples
    real = method.gan_real(x0, teacher)
    assert real.shape == x0.shape
    assert (real[:6] == 100).all() and (real[6:] != 100).all()


# --- the generator ---------------------------------------------------------------------------------
def test_sampling_times_use_trained_times_then_fill_below_them():
    times = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert sampling_times(times, 1).tolist() == [1.0, 0.0]
    assert sampling_times(times, 2).tolist() == [1.0, 0.5, 0.0]
    assert sampling_times(times, 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    torch.testing.assert_close(
        sampling_times(torch.tensor([1.0], dtype=torch.float64), 3),
        torch.tensor([1.0, 2 / 3, 1 / 3, 0.0], dtype=torch.float64),
    )


def test_backward_simulation_reaches_the_state_sampling_visits():
    """k simulated steps from noise = the sampler's state at times[k] (same fresh noise)."""
    student = mlp()
    times = torch.tensor([1.0, 0.6, 0.3])
    noise = torch.randn(16, 2)
    torch.manual_seed(5)
    state = backward_simulate(student, noise, times, 2)
    torch.manual_seed(5)
    x = noise.clone()
    for s, s_next in ((1.0, 0.6), (0.6, 0.3)):
        x0 = x - s * student(x, torch.full((16,), s))
        x = (1 - s_next) * x0 + s_next * torch.randn_like(x0)
    torch.testing.assert_close(state, x)


def test_generator_times_and_options_are_validated():
    with pytest.raises(ValueError, match="generator_times"):
        DMD2(generator_times=[0.5, 1.0])
    with pytest.raises(ValueError, match="fake_updates_per_generator"):
        DMD2(fake_updates_per_generator=0)
    with pytest.raises(ValueError, match="gan_backbone"):
        DMD2(gan_backbone="dino")


def test_karras_law_and_new_options_are_validated():
    with pytest.raises(ValueError, match="time_shift"):
        DMD2(dm_time_dist="karras", time_shift=5.0)
    for key in ("dm_time_dist", "fake_score_weighting", "gan_head"):
        with pytest.raises(ValueError, match=key):
            DMD2(**{key: "nope"})


class RecordingTimes(nn.Module):
    """A velocity model that records the times it is asked about."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, s):
        self.seen.append(s.detach().clone())
        return self.model(x, s)


@pytest.mark.parametrize("dist", ["uniform", "karras"])
def test_fake_score_trains_on_the_dm_terms_noise_law(dist):
    """FastGen dmd2.py:118-121, 344-362 and rCM draw the fake score's times from the DM term's law;
    DMD2's karras law trains it on every step of its table."""
    torch.manual_seed(0)
    teacher = Teacher(mlp(), (2,))
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    kwargs = dict(min_time=0.5, max_time=0.9, time_shift=5.0) if dist == "uniform" else dict(dm_time_dist="karras")
    method = DMD2(generator_times=[1.0], **kwargs)
    method.attach(teacher, student)
    method.fake_score = RecordingTimes(method.fake_score)
    method.fake_score_loss(torch.zeros(4096, 2), teacher, student)
    s = method.fake_score.seen[0]
    if dist == "uniform":  # shift 5 of U(0.5, 0.9): [5/6, 45/46]
        assert s.min() >= 5 / 6 - 1e-6 and s.max() <= 45 / 46 + 1e-6
    else:  # sigma 0.002 .. 80 over all 1000 steps: both ends are reached
        assert s.min() < 0.0021 and s.max() > 0.98


def test_edm_weighting_weighs_the_velocity_error_as_edm_weighs_the_x0_error():
    teacher = Teacher(mlp(), (2,))
    method = DMD2(fake_score_weighting="edm", sigma_data=0.5)
    method.attach(teacher, copy.deepcopy(teacher.model))
    x0, eps, s = (
        torch.randn(3, 2, dtype=torch.float64),
        torch.randn(3, 2, dtype=torch.float64),
        torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
    )
    method.fake_score.double()
    x_s = (1 - s[:, None]) * x0 + s[:, None] * eps
    x0_pred = x_s - s[:, None] * method.fake_score(x_s, s)
    sigma = s / (1 - s)
    expected = ((1 / sigma**2 + 1 / 0.5**2)[:, None] * (x0_pred - x0) ** 2).mean()
    torch.testing.assert_close(method.fake_score_term(x0, s, eps), expected)


def test_edm_weighting_with_unit_sigma_data_is_rcms_critic_loss():
    """NVlabs/rcm rcm/models/t2v_model_distill_rcm.py:686-693: x_t = cos t x0 + sin t eps, loss
    |x0 - x0_fake|^2 / sin^2 t (summed over dims; here the mean), at FM time s = sin t / (cos t + sin t)."""
    torch.manual_seed(0)
    teacher = Teacher(mlp(), (2,))
    method = DMD2(fake_score_weighting="edm", sigma_data=1.0)
    method.attach(teacher, copy.deepcopy(teacher.model))
    method.fake_score.double()
    x0, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.2, 0.7, 1.2, 1.5], dtype=torch.float64)
    s = torch.sin(t) / (torch.cos(t) + torch.sin(t))
    x_t = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * eps
    x_s = x_t / (torch.cos(t) + torch.sin(t))[:, None]  # the same state in FM coordinates
    x0_fake = x_s - s[:, None] * method.fake_score(x_s, s)
    official = ((x0 - x0_fake) ** 2 / torch.sin(t)[:, None] ** 2).mean()
    torch.testing.assert_close(method.fake_score_term(x0, s, eps), official)


def test_generator_starts_at_the_students_largest_noise_level():
    """An EDM student's first time is 80/81 (sigma 80): its one-step sample is D(80 z; 80)."""
    from distill.teachers.edm import edm_teacher
    from tests.teachers.edm_pickles import tiny_edm

    teacher = edm_teacher(tiny_edm("song")[0].double(), {})
    student = copy.deepcopy(teacher.model)
    method = DMD2(generator_times=[1.0, 0.5])
    method.attach(teacher, student)
    assert method.times.tolist() == [80 / 81, 0.5]
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(0)
    sample = method.sample(student, z, 1)
    torch.testing.assert_close(sample, student.net(80 * z, torch.full((2,), 80.0, dtype=torch.float64)))
    fm = DMD2(generator_times=[1.0, 0.5])
    fm.attach(Teacher(mlp(), (2,)), mlp())
    assert fm.times.tolist() == [1.0, 0.5]  # flow matching reaches s = 1
    with pytest.raises(ValueError, match="generator_times"):
        DMD2(generator_times=[1.0, 0.99]).attach(teacher, student)


def test_sampling_is_reproducible_per_sample():
    assert_sampling_reproducible_per_sample(DMD2(), mlp(), 4)


# --- learning ----------------------------------------------------------------------------------------
def test_regression_pairs_grow_a_few_per_step_into_one_fixed_set():
    teacher = Teacher(mlp(), (2,))
    like = torch.zeros(3, 2)
    method, again = (
        DMD2(regression_weight=1.0, regression_pairs=5, pairs_per_step=2, regression_steps=4) for _ in range(2)
    )
    sizes = []
    for _ in range(4):
        method.grow_pairs(teacher, like)
        again.grow_pairs(teacher, like)
        sizes.append(len(method.pair_noise))
    assert sizes == [2, 4, 5, 5]
    assert torch.equal(method.pair_noise, again.pair_noise)  # the same set in every run
    grid = make_grid("cosine", 4)
    torch.testing.assert_close(method.pair_target, sample_heun(teacher, method.pair_noise, grid))


def test_dmd_regression_variant_pulls_one_step_samples_to_teacher_pairs():
    teacher, data = ring_teacher_and_data(2048)
    student = mlp()
    method = DMD2(
        generator_times=[1.0],
        fake_updates_per_generator=1,
        regression_weight=1.0,
        regression_pairs=64,
        regression_steps=8,
        pairs_per_step=64,
    )
    method.attach(teacher, student)
    first = method.regression_term(student, teacher, data[:64]).item()
    torch.manual_seed(0)
    train_phases(method, teacher, student, data, 60, 1e-3)
    assert method.pair_target.shape == (64, 2)
    assert method.regression_term(student, teacher, data[:64]).item() < 0.5 * first


def test_dmd2_learns_the_ring_mixture_in_one_step():
    """A rough diffusion model's one-step sample is the blurred mean; DMD2 makes it the ring."""
    (sw_before, _, near_before), (sw_after, covered, near_after) = one_step_ring_quality_before_after(
        DMD2(generator_times=[1.0])
    )
    assert sw_after < 0.25 * sw_before
    assert covered == 1.0  # every mode kept: no collapse
    assert near_after > near_before + 0.3


def test_gan_on_an_analytic_teacher_reads_the_samples_themselves():
    teacher, _ = ring_teacher_and_data(64)
    student = mlp()
    method = DMD2(gan_weight=1e-2, gan_backbone="teacher")
    method.attach(teacher, student)
    logits = method.gan_logits(torch.randn(5, 2), teacher)
    assert [tuple(lg.shape) for lg in logits] == [(5,)]


def test_lora_fake_score_trains_adapters_on_the_teachers_own_weights():
    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = DMD2(gan_weight=1e-2, fake_score_lora={"rank": 2, "alpha": 2, "targets": r".*(time_emb_proj|conv\d)"})
    method.attach(teacher, student)
    trainable = {id(p) for p in method.trainable_parameters("fake_score", student)}
    lora = {id(p) for n, p in method.fake_score.named_parameters() if ".lora_" in n}
    assert lora and trainable == lora | {id(p) for p in method.gan_heads.parameters()}
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert all(p.data_ptr() in teacher_ptrs for p in method.fake_score.parameters() if not p.requires_grad)
    method.loss("fake_score", torch.randn(4, 1, 8, 8), teacher, student, 0)["loss"].backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in method.fake_score.named_parameters() if "lora_B" in n
    )
    assert not has_gradients(teacher)


# --- deterministic transitions (a PCM-warm-started generator) ----------------------------------
def test_deterministic_generator_sample_is_the_ddim_chain_with_gradient_through_every_step():
    from distill.students.generator import deterministic_sample

    torch.manual_seed(0)
    student, noise, times = mlp().double(), torch.randn(6, 2, dtype=torch.float64), torch.tensor([1.0, 0.6, 0.3])
    x_hat, s = deterministic_sample(student, noise, times.double())
    x = noise.clone()  # times[0] = 1: the state is the noise itself
    for a, b in ((1.0, 0.6), (0.6, 0.3)):
        x = x + (b - a) * student(x, torch.full((6,), a, dtype=torch.float64))
    expected = x - 0.3 * student(x, torch.full((6,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(x_hat, expected)
    torch.testing.assert_close(s, torch.full((6,), 0.3, dtype=torch.float64))
    # the gradient is the whole chain's: the same as differentiating the explicit chain
    grads = torch.autograd.grad(x_hat.square().sum(), list(student.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(student.parameters()))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_deterministic_dmd2_samples_a_pcm_student_exactly_as_pcm_does():
    # The turbo recipe's stage 2 starts from a 2-phase PCM student: with deterministic transitions
    # its DMD2 sampler is PCM's edge-to-edge sampler, while DMD2's fresh re-noising is not.
    from distill.methods import PhasedConsistency

    torch.manual_seed(0)
    student, noise = mlp(), torch.randn(16, 2)
    pcm = PhasedConsistency(phases=2, num_euler_timesteps=100)
    edges = pcm.sample_times(2)[:-1].tolist()  # [1, 0.5]
    deterministic = DMD2(generator_times=edges, transition="deterministic")
    renoising = DMD2(generator_times=edges)
    with torch.no_grad():
        reference = pcm.sample(student, noise, 2)
        torch.testing.assert_close(deterministic.sample(student, noise, 2), reference)
        assert not torch.allclose(renoising.sample(student, noise, 2), reference)
    assert deterministic.sampling_plan(student, 2).renoise is False
    with pytest.raises(ValueError, match="transition"):
        DMD2(transition="fresh")
