"""LADD: which networks each phase trains, the 1-in-k schedule, finite losses on real teachers, and a
one-step generator that learns the ring mixture from real data only."""

import pytest
import torch

from distill.methods import LADD
from distill.students.flow_map import student_from_teacher
from tests.methods.learning import has_gradients, one_step_ring_quality_before_after, tiny_unet_teacher


def test_the_generator_steps_on_one_batch_in_k_and_the_heads_on_the_others():
    method = LADD(student_update_freq=5)
    assert [method.phases(step)[0] for step in range(6)] == ["student"] + ["discriminator"] * 4 + ["student"]


@pytest.mark.parametrize("r1_weight", [0.0, 100.0])
def test_each_phase_trains_its_own_network_on_the_frozen_teachers_features(r1_weight):
    teacher = tiny_unet_teacher()
    student = student_from_teacher(teacher.model)
    method = LADD(r1_weight=r1_weight)
    method.attach(teacher, student)
    assert len(method.heads.heads) >= 2  # one head per encoder layer read
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    for phase, trained, still in (("student", student, method.heads), ("discriminator", method.heads, student)):
        for net in (student, method.heads):
            net.zero_grad(set_to_none=True)
        terms = method.loss(phase, x0, teacher, student, 0)
        assert all(torch.isfinite(v).all() for v in terms.values()), phase
        terms["loss"].backward()
        assert has_gradients(trained) and not has_gradients(still) and not has_gradients(teacher), phase
    assert ("r1" in terms) == (r1_weight > 0)


def test_bad_options_are_refused_naming_the_key():
    for bad in ({"student_update_freq": 0}, {"time_min": 0.5, "time_max": 0.4}, {"r1_weight": -1.0}):
        with pytest.raises(ValueError, match="method.objective"):
            LADD(**bad)


def test_ladd_learns_the_ring_mixture_in_one_step_from_real_data_only():
    (sw_before, _, near_before), (sw_after, covered, near_after) = one_step_ring_quality_before_after(
        LADD(student_update_freq=2), steps=600
    )
    assert sw_after < 0.5 * sw_before
    assert covered == 1.0  # every mode kept: no collapse
    assert near_after > near_before + 0.2
