"""f-distill (DMD2 with f_divergence): its options, the GAN head reading the DM term's own noised
samples, the checkpointed ratio bins, and learning the ring mixture in one step."""

import pytest
import torch

from distill.core.errors import ConfigError
from distill.methods import DMD2
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from tests.methods.learning import (
    has_gradients,
    one_step_ring_quality_before_after,
    ring_teacher_and_data,
    tiny_unet_teacher,
)


def test_options_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match="f_divergence=kl reads the density ratio from the GAN head"):
        DMD2(f_divergence="kl")  # no GAN: no ratio
    with pytest.raises(ConfigError, match="method.objective.f_divergence='tv'"):
        DMD2(gan_weight=1e-2, f_divergence="tv")
    with pytest.raises(ConfigError, match="ratio_lower=2.0, ratio_upper=1.0"):
        DMD2(gan_weight=1e-2, f_divergence="js", ratio_lower=2.0, ratio_upper=1.0)
    with pytest.raises(ConfigError, match="ratio_ema_rate=1.0"):
        DMD2(gan_weight=1e-2, f_divergence="js", ratio_ema_rate=1.0)


def test_ratio_bins_are_checkpointed_only_for_f_distill():
    assert "ratio_bin_means" not in DMD2(gan_weight=1e-2).state_dict()  # DMD2 checkpoints stay as they were
    method = DMD2(gan_weight=1e-2, f_divergence="js", ratio_bins=10)
    assert method.state_dict()["ratio_bin_means"].shape == (10,)
    assert "ratio_bin_means" not in DMD2(gan_weight=1e-2, f_divergence="js", ratio_bins=0).state_dict()


def test_generator_step_reaches_the_generator_through_dm_and_gan_and_moves_the_bins():
    teacher = tiny_unet_teacher()
    student = VelocityModel(teacher.model.net.__class__(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4))
    method = DMD2(gan_weight=1e-2, gan_backbone="teacher", f_divergence="kl", ratio_bins=4, ratio_ema_rate=0.5)
    method.attach(teacher, student)
    torch.manual_seed(0)
    terms = method.loss("student", torch.randn(6, 1, 8, 8), teacher, student, 0)
    terms["loss"].backward()
    assert has_gradients(student) and not has_gradients(method.gan_heads)  # heads frozen in the G phase
    assert {"dm", "gan_g", "h_min", "h_max"} <= set(terms)
    assert 0 < terms["h_min"] <= 1 <= terms["h_max"]  # weights of mean 1
    assert not torch.equal(method.ratio_bin_means, torch.ones(4))


@pytest.mark.parametrize("divergence", ["js", "kl"])
def test_f_distill_learns_the_ring_mixture_in_one_step(divergence):
    """As DMD2 does (tests/methods/test_dmd.py): the one-step sample of a rough diffusion model, the
    blurred mean, becomes the ring, every mode kept."""
    method = DMD2(generator_times=[1.0], gan_weight=1e-2, gan_backbone="teacher", f_divergence=divergence)
    (sw_before, _, near_before), (sw_after, covered, near_after) = one_step_ring_quality_before_after(method)
    assert sw_after < 0.25 * sw_before
    assert covered == 1.0
    assert near_after > near_before + 0.3


def test_on_an_analytic_teacher_the_gan_reads_the_noised_samples_themselves():
    teacher, data = ring_teacher_and_data(64)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    method = DMD2(gan_weight=1e-2, gan_backbone="teacher", f_divergence="js")
    method.attach(teacher, student)
    assert torch.isfinite(method.loss("student", data[:16], teacher, student, 0)["loss"])
