"""pi-Flow: the policy students start as the teacher, what takes gradients, one call per sampling step,
bad options refused, and learning on the analytic ring mixture with a GMFlow and a DX policy."""

import pytest
import torch

from distill.methods.piflow import PiFlow, step_lengths
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.students.lora import add_lora
from distill.students.policy import DXStudent, GMFlowStudent
from tests.methods.learning import (
    evaluation_noise,
    exact_endpoints,
    has_gradients,
    regress_velocity,
    ring_teacher_and_data,
    sample_error,
    tiny_unet_teacher,
    train_method,
)


@pytest.mark.parametrize("policy", ["gmflow", "dx"])
def test_policy_students_start_as_the_teacher_velocity(policy):
    torch.manual_seed(0)
    teacher = tiny_unet_teacher()
    method = PiFlow(policy=policy, components=4, grid_points=3, bias_noise=0.0)
    student = method.prepare_student(student_from_teacher(teacher.model))
    assert isinstance(student, GMFlowStudent if policy == "gmflow" else DXStudent)
    assert method.prepare_student(student) is student  # a checkpoint reload keeps its heads
    x, s = torch.randn(3, 1, 8, 8), torch.rand(3)
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), teacher(x, s), rtol=1e-5, atol=1e-5)
    if policy == "gmflow":
        means, logweights, logstds = student.gm_output(x, s)
        assert means.shape == (3, 4, 1, 8, 8) and logweights.shape == (3, 4, 1, 8, 8)
        torch.testing.assert_close(logstds, torch.full((3,), 0.05).log())  # gmdit_v2.py: ln 0.05


def test_last_step_is_scaled_and_steps_cover_raw_time():
    assert step_lengths(4, 0.5) == pytest.approx([1 / 3.5] * 3 + [0.5 / 3.5])
    method = PiFlow(train_nfes=[4], final_step_scale=0.5)
    assert method.raw_times(4) == pytest.approx([1.0, 2.5 / 3.5, 1.5 / 3.5, 0.5 / 3.5, 0.0])


@pytest.mark.parametrize(
    "bad",
    [
        {"policy": "momentum"},
        {"dx_mode": "spline"},
        {"train_nfes": []},
        {"intermediate_states": 0},
        {"component_dropout": 1.0},
        {"final_step_scale": 0.0},
        {"window_substeps": -1},
    ],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match="method.objective."):
        PiFlow(**bad)


@pytest.mark.parametrize("data_free", [True, False])
def test_only_adapters_and_heads_take_gradients(data_free):
    teacher = tiny_unet_teacher()
    method = PiFlow(components=3, teacher_mix_steps=10, window_substeps=3, data_free=data_free, logstd_width=8)
    student = method.prepare_student(student_from_teacher(teacher.model))
    add_lora(student, 2, 2, r".*time_emb_proj", train_fully=method.fresh_parameters)
    method.attach(teacher, student)
    terms = method.loss("student", torch.randn(4, 1, 8, 8), teacher, student, step=3)
    terms["loss"].backward()
    assert 0 < float(terms["trainable_fraction"]) < 0.2 and float(terms["teacher_share"]) == pytest.approx(0.7)
    assert not has_gradients(teacher)
    for name, p in student.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert has_gradients(student.means) and has_gradients(student.logits) and has_gradients(student.logstds)


def test_sampling_is_one_network_call_per_step():
    torch.manual_seed(0)
    method = PiFlow(components=3, shift=2.0)
    student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1)))
    calls = []
    gm_output = student.gm_output
    student.gm_output = lambda x, s: calls.append(float(s[0])) or gm_output(x, s)
    method.sample(student, torch.randn(5, 2), 2)
    assert calls == pytest.approx([1.0, 2 * 0.5 / (1 + 0.5)])  # the shifted raw grid 1 -> 0.5 -> 0


@pytest.mark.parametrize("policy", ["gmflow", pytest.param("dx", marks=pytest.mark.slow)])
def test_learns_two_step_policies_of_the_ring_teacher(policy):
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=64, depth=2))
    regress_velocity(model, model.parameters(), teacher, data, 200)  # a rough flow model to start from
    states = 2 if policy == "gmflow" else 4  # the ImageNet GMFlow and the FLUX.1 DX recipes' counts
    method = PiFlow(
        policy=policy, components=8, grid_points=6, total_substeps=16, window_substeps=1, intermediate_states=states
    )
    student = method.prepare_student(model)
    noise = evaluation_noise(500)
    exact = exact_endpoints(teacher, noise, grid="uniform")
    before = sample_error(method, student, noise, exact, 2)
    train_method(method, teacher, student, data, steps=100, lr=2e-3, batch_size=128)
    after = sample_error(method, student, noise, exact, 2)
    assert after < 0.5 * before, (before, after)
