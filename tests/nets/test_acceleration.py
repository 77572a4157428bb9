"""compile, activation checkpointing and channels-last: the same losses and gradients as without."""

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from distill.methods import DMD2
from distill.methods.meanflow import MeanFlow
from distill.methods.progressive import ProgressiveDistillation
from distill.methods.scm import SCM
from distill.nets.acceleration import (
    checkpoint_blocks,
    compile_forward,
    repeated_blocks,
    to_channels_last,
)
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import student_from_teacher
from distill.teachers import Teacher
from tests.methods.learning import tiny_unet_teacher

METHODS = {
    "pd": lambda: ProgressiveDistillation(start_steps=4, steps_per_round=100),
    "scm_exact_jvp": lambda: SCM(tangent_warmup=1, jvp="exact"),
    "meanflow_exact_jvp": lambda: MeanFlow(jvp="exact"),
    "dmd2": lambda: DMD2(generator_times=[1.0], fake_updates_per_generator=1),
}


def mlp_teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher(VelocityModel(TimeMLP((2,), width=32, depth=2)), (2,))


def losses_and_grads(teacher: Teacher, method_name: str, switch=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every phase's loss and gradient (student and method nets) at one step, from one RNG state."""
    torch.manual_seed(0)
    method = METHODS[method_name]()
    student = method.prepare_student(student_from_teacher(teacher.model))
    method.attach(teacher, student)
    if switch is not None:
        switch(student, teacher)
    x0 = torch.randn(8, *teacher.data_shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
    torch.manual_seed(2)
    out = []
    for phase in method.phases(10):
        for p in params:
            p.grad = None
        loss = method.loss(phase, x0, teacher, student, 10)["loss"]
        loss.backward()
        out.append((loss.detach(), torch.cat([p.grad.flatten() for p in params if p.grad is not None])))
    return out


def assert_same(expected, got, atol: float) -> None:
    assert len(expected) == len(got)
    for (loss, grad), (loss2, grad2) in zip(expected, got, strict=True):
        torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=atol)
        torch.testing.assert_close(grad2, grad, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("method", list(METHODS))
def test_activation_checkpointing_gives_the_same_loss_and_gradients(method):
    teacher = tiny_unet_teacher()
    blocks = []
    got = losses_and_grads(teacher, method, lambda student, _: blocks.extend(checkpoint_blocks(student)))
    assert len(blocks) >= 4  # the UNet's down and up blocks (and its middle block's resnets)
    assert_same(losses_and_grads(teacher, method), got, atol=1e-6)


def test_activation_checkpointing_stores_fewer_activations_and_keeps_parameter_names():
    teacher = tiny_unet_teacher()
    student = student_from_teacher(teacher.model)
    keys = list(student.state_dict())
    x, s = torch.randn(4, 1, 8, 8), torch.rand(4)

    def saved_tensors(model: nn.Module) -> int:
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, s).sum().backward()
        return count

    plain = saved_tensors(student)
    checkpoint_blocks(student)
    assert saved_tensors(student) < plain / 2
    assert list(student.state_dict()) == keys


def test_repeated_blocks_are_the_outermost_module_list_elements():
    net = TimeMLP((2,), width=16, depth=3)
    assert repeated_blocks(net) == list(net.blocks)


@pytest.mark.parametrize("method", ["pd", "dmd2"])
def test_channels_last_gives_the_same_loss_and_gradients(method):
    teacher = tiny_unet_teacher()

    def channels_last(student, teacher_):
        to_channels_last(student)
        to_channels_last(teacher_)

    got = losses_and_grads(copy.deepcopy(teacher), method, channels_last)
    assert_same(losses_and_grads(teacher, method), got, atol=1e-5)


def test_channels_last_puts_convolution_weights_in_nhwc():
    student = student_from_teacher(tiny_unet_teacher().model)
    to_channels_last(student)
    convs = [m.weight for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_compiled_forward_matches_eager_and_a_deep_copy_runs_its_own_weights():
    teacher = mlp_teacher()
    graphs = counters["stats"]["unique_graphs"]
    got = losses_and_grads(teacher, "pd", lambda student, _: compile_forward(student, backend="aot_eager"))
    assert counters["stats"]["unique_graphs"] > graphs  # compiled, not silently run eagerly
    assert_same(losses_and_grads(teacher, "pd"), got, atol=1e-6)

    student = compile_forward(student_from_teacher(teacher.model), backend="eager")
    assert list(student.state_dict()) == list(teacher.model.state_dict())  # no _orig_mod. prefix
    copy_ = copy.deepcopy(student)  # what EMA copies, targets and PD's snapshots are
    with torch.no_grad():
        for p in copy_.parameters():
            p.add_(0.1)
    x, s = torch.randn(4, 2), torch.rand(4)
    eager_copy = VelocityModel(copy.deepcopy(copy_.net))
    torch.testing.assert_close(copy_(x, s), eager_copy(x, s))
    assert not torch.allclose(copy_(x, s), student(x, s))


@pytest.mark.slow
def test_inductor_compiled_unet_student_matches_eager():
    """The default backend on CPU (C++ code generation: minutes on two cores)."""
    teacher = tiny_unet_teacher()
    got = losses_and_grads(teacher, "pd", lambda student, _: compile_forward(student))
    assert_same(losses_and_grads(teacher, "pd"), got, atol=1e-5)
