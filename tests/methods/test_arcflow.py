"""ArcFlow: teacher-mixing schedule, what takes gradients, closed-form sampling, and learning on the
analytic ring mixture (where the trained student's arcs are checked against numerical integration)."""

import pytest
import torch

from distill.core.momentum import advance, velocity_at
from distill.methods.arcflow import ArcFlow
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.students.lora import add_lora
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


def test_teacher_share_falls_linearly_over_the_mixing_steps():
    method = ArcFlow()
    method.set_budget(1500)
    assert method.teacher_mix_steps == 100
    assert [method.teacher_share(s) for s in (0, 50, 100, 900)] == [1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "bad",
    [
        {"train_nfes": []},
        {"intermediate_states": 0},
        {"component_dropout": 1.0},
        {"window_substeps": -1},
        {"total_substeps": 0},
    ],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match="method."):
        ArcFlow(**bad)


def test_only_adapters_and_heads_take_gradients():
    teacher = tiny_unet_teacher()
    method = ArcFlow(components=3, intermediate_states=2, teacher_mix_steps=10)
    student = method.prepare_student(student_from_teacher(teacher.model))
    add_lora(student, 2, 2, r".*time_emb_proj", train_fully=method.fresh_parameters)
    method.attach(teacher, student)
    terms = method.loss("student", torch.randn(4, 1, 8, 8), teacher, student, step=3)
    terms["loss"].backward()
    assert 0 < float(terms["trainable_fraction"]) < 0.1 and float(terms["teacher_share"]) == pytest.approx(0.7)
    assert not has_gradients(teacher)
    for name, p in student.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert has_gradients(student.means) and has_gradients(student.rates)


def test_sampling_is_one_call_per_step_then_the_arc():
    torch.manual_seed(0)
    method = ArcFlow(components=3, shift=2.0)
    student = method.prepare_student(VelocityModel(TimeMLP((2,), width=16, depth=1)))
    calls = []
    mixture = student.mixture
    student.mixture = lambda x, s: calls.append(float(s[0])) or mixture(x, s)
    noise = torch.randn(5, 2)
    out = method.sample(student, noise, 2)
    assert calls == pytest.approx([1.0, 2 * 0.5 / (1 + 0.5)])  # the shifted grid 1 -> 2/3 -> 0
    with torch.no_grad():
        x, grid = noise, method.grid(2, noise)
        for i in range(2):
            s, s_next = grid[i].expand(5), grid[i + 1].expand(5)
            x = advance(x, mixture(x, s), s, s, s_next)
    torch.testing.assert_close(out, x)


def test_learns_two_step_arcs_of_the_ring_teacher_and_its_arcs_are_exact():
    teacher, data = ring_teacher_and_data()
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=64, depth=2))
    regress_velocity(model, model.parameters(), teacher, data, 200)  # a rough flow model to start from
    method = ArcFlow(components=4, teacher_mix_steps=30)
    student = method.prepare_student(model)
    noise = evaluation_noise(500)
    exact = exact_endpoints(teacher, noise, grid="uniform")
    before = sample_error(method, student, noise, exact, 2)
    train_method(method, teacher, student, data, steps=100, lr=2e-3, batch_size=128)
    after = sample_error(method, student, noise, exact, 2)
    assert after < 0.5 * before, (before, after)
    # The trained field's closed-form step equals integrating that same field numerically.
    student = student.double()
    x, s_src = noise[:64].double(), torch.ones(64, dtype=torch.float64)
    with torch.no_grad():
        m = student.mixture(x, s_src)
        y, n = x.clone(), 1000
        for i in range(n):
            y = y - 0.5 / n * velocity_at(m, torch.full((64,), 0.5 * (i + 0.5) / n, dtype=torch.float64))
        torch.testing.assert_close(advance(x, m, s_src, s_src, s_src - 0.5), y, rtol=1e-6, atol=1e-6)


def test_paper_config_gives_the_rate_head_a_tenth_of_the_learning_rate(tmp_path):
    # pnotp/ArcFlow configs/qwen/_ddp_train.py: paramwise_cfg lr_mult 0.1 on proj_out_loggamma
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=paper_arcflow_qwen_image"], tmp_path)
    method = instantiate(cfg.method.objective)
    student = method.prepare_student(VelocityModel(TimeMLP((4,), width=8, depth=1)))
    optimizer = instantiate(cfg.method.optimizer)(method.trainable_parameters("student", student))
    rates = {id(p) for p in student.rates.parameters()}
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert set(lrs) == {id(p) for p in student.parameters()}
    assert [lrs[i] for i in rates] == pytest.approx([1e-5] * len(rates))
    others = [lr for i, lr in lrs.items() if i not in rates]
    assert others == pytest.approx([1e-4] * len(others))
    with pytest.raises(ValueError, match="method.objective.optimizer_lr"):
        ArcFlow(rate_lr_scale=0.1)
