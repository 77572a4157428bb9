"""The guidance scale as a student input (methods.md 13): per-sample guided teacher velocities, the
zero-initialised w embedding, and a student trained over a range of w against one trained at one w."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from distill.core.conditioning import GUIDANCE, LABELS, conditioned, draw_guidance, labels_for, null_labels
from distill.core.errors import ConfigError
from distill.core.gmm import GaussianMixture, ring_mixture
from distill.evaluation.runner import EvalSpec, seed_condition
from distill.lit.distill import DistillModule
from distill.methods import MeanFlow
from distill.methods.progressive import ProgressiveDistillation
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel
from distill.students.guidance_input import (
    check_guidance_lr_scale,
    check_guidance_range,
    guidance_groups,
    with_guidance_input,
)
from distill.teachers import Teacher


class ClassRingVelocity(nn.Module):
    """Exact velocity of a class-conditional ring: class c holds every ``classes``-th mode from c, the
    null class (label ``classes``) the whole ring, so guidance pushes samples to their class's modes."""

    def __init__(self, classes: int = 2):
        super().__init__()
        ring = ring_mixture()
        self.num_classes = classes
        self.mixtures = [
            GaussianMixture(ring.means[c::classes], ring.stds[c::classes], ring.weights[c::classes] * classes)
            for c in range(classes)
        ] + [ring]

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        labels = labels_for(x)
        labels = null_labels(x, self.num_classes) if labels is None else labels
        out = torch.empty_like(x)
        for c, mixture in enumerate(self.mixtures):
            rows = labels == c
            if rows.any():
                x0, eps = mixture.posterior(x[rows].double(), 1 - s[rows].double(), s[rows].double())
                out[rows] = (eps - x0).to(x.dtype)
        return out


def class_ring_teacher(guidance: float = 1.0) -> Teacher:
    return Teacher(ClassRingVelocity(), (2,), guidance=guidance)


def test_per_sample_guidance_equals_the_fixed_scale_row_by_row():
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=3)).double()
    x, s = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    labels, w = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1.0, 1.5, 2.0, 3.0, 4.5, 0.5], dtype=torch.float64)
    with conditioned({LABELS: labels, GUIDANCE: w}):
        per_sample = Teacher(model, (2,), guidance=7.0)(x, s)  # the condition's scales win over the fixed one
    for i, scale in enumerate(w.tolist()):
        with conditioned({LABELS: labels}):
            fixed = Teacher(model, (2,), guidance=scale)(x, s)
        torch.testing.assert_close(per_sample[i], fixed[i], rtol=1e-12, atol=1e-12)
    # A method that stacks k copies of the batch tiles the scales with the labels.
    with conditioned({LABELS: labels, GUIDANCE: w}):
        stacked = Teacher(model, (2,))(torch.cat([x, x]), torch.cat([s, s]))
    torch.testing.assert_close(stacked, torch.cat([per_sample, per_sample]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "net",
    [
        lambda: TimeMLP((1, 8, 8), width=16, depth=1, num_classes=3),
        lambda: UNet(8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, num_classes=3),
    ],
)
def test_guidance_input_starts_as_the_student_and_then_reads_w(net):
    torch.manual_seed(0)
    student = VelocityModel(net())
    x, s, labels = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    with conditioned({LABELS: labels}), torch.no_grad():
        before = student(x, s)
        wide = with_guidance_input(student, default_guidance=2.0)
        assert wide.net.guidance_embed is not None and wide.net.config["default_guidance"] == 2.0
        torch.testing.assert_close(wide(x, s), before, rtol=0, atol=0)  # zero-initialised: as it was
        for p in wide.net.guidance_embed.parameters():
            p.add_(0.1 * torch.randn_like(p))
        default = wide(x, s)
    with conditioned({LABELS: labels, GUIDANCE: torch.full((4,), 2.0)}), torch.no_grad():
        torch.testing.assert_close(wide(x, s), default)  # no scale given: default_guidance
    with conditioned({LABELS: labels, GUIDANCE: torch.tensor([1.0, 2.0, 3.0, 4.0])}), torch.no_grad():
        varied = wide(x, s)
    assert not torch.allclose(varied[0], default[0]) and torch.allclose(varied[1], default[1])
    assert with_guidance_input(wide, 2.0) is wide  # idempotent: checkpoint reloads rebuild this way


def test_guidance_range_is_checked():
    assert check_guidance_range(None) is None
    assert check_guidance_range([1, 4]) == (1.0, 4.0)
    for bad in ([0, 2], [3, 2], [1], "high"):
        with pytest.raises(ConfigError, match="student.guidance_range"):
            check_guidance_range(bad)
    w = draw_guidance(10_000, 1.0, 4.0)
    assert w.min() >= 1 and w.max() <= 4
    assert abs((w < 2).double().mean().item() - 0.5) < 0.03  # log-uniform: as many below 2 as above


def class_ring_data(teacher: Teacher, per_class: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each class and their labels."""
    classes = teacher.model.mixtures[:-1]
    g = torch.Generator().manual_seed(seed)
    data = torch.cat([m.sample(per_class, g) for m in classes]).float()
    return data, torch.arange(len(classes)).repeat_interleave(per_class)


def guided_target_error(student: nn.Module, teacher: Teacher, w: float, n: int = 2000) -> float:
    """Mean squared distance of the student's velocity to the teacher's guided velocity at ``w``."""
    g = torch.Generator().manual_seed(5)
    x0, labels = class_ring_data(teacher, n // 2, seed=5)
    s = torch.rand(n, generator=g) * 0.9 + 0.05
    x = (1 - s[:, None]) * x0 + s[:, None] * torch.randn(n, 2, generator=g)
    with conditioned({LABELS: labels, GUIDANCE: torch.full((n,), w)}), torch.no_grad():
        return (student.velocity(x, s) - teacher(x, s)).pow(2).sum(1).mean().item()


def train_over_guidance(guidance_range: tuple[float, float], steps: int = 400) -> tuple[nn.Module, Teacher]:
    """A guidance-input MeanFlow student (flow-matching on the teacher's velocity: ``equal_ratio=1``)
    trained with each sample's w drawn from ``guidance_range``."""
    torch.manual_seed(0)
    teacher = class_ring_teacher()
    data, labels = class_ring_data(teacher, 4096)
    method = MeanFlow(equal_ratio=1.0, time_dist="uniform", adaptive_power=0.0)
    student = method.prepare_student(
        with_guidance_input(VelocityModel(TimeMLP((2,), width=64, depth=2, num_classes=2)), default_guidance=1.0)
    )
    method.attach(teacher, student)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for step in range(steps):
        rows = torch.randint(0, len(data), (256,))
        condition = {LABELS: labels[rows], GUIDANCE: draw_guidance(256, *guidance_range)}
        with conditioned(condition):
            loss = method.loss("student", data[rows], teacher, student, step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student, teacher


def test_a_student_trained_over_w_matches_the_guided_teacher_across_w_better_than_one_trained_at_one_w():
    over_range, teacher = train_over_guidance((1.0, 4.0))
    at_one, _ = train_over_guidance((2.0, 2.0))
    scales = (1.0, 2.0, 4.0)
    ranged = [guided_target_error(over_range, teacher, w) for w in scales]
    single = [guided_target_error(at_one, teacher, w) for w in scales]
    print("trained over [1, 4]:", ranged, "trained at 2:", single)
    assert sum(ranged) < 0.75 * sum(single)
    assert ranged[0] < 0.6 * single[0] and ranged[2] < 0.8 * single[2]  # scales the one-w student never saw
    assert ranged[1] < 1.5 * single[1]  # and about as good at the one-w student's own scale


def test_the_students_optimizer_gives_the_guidance_embedding_its_own_lr():
    teacher = class_ring_teacher()
    student = with_guidance_input(VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=2)), default_guidance=2.0)
    method = ProgressiveDistillation(start_steps=4, final_steps=1, steps_per_round=2)
    module = DistillModule(teacher, student, method, lambda p: torch.optim.Adam(p, lr=1e-3), guidance_lr_scale=10.0)
    (opt,) = module.configure_optimizers()
    embedding = {id(p) for p in student.net.guidance_embed.parameters()}
    groups = [(g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups]
    assert groups == [(1e-3, {id(p) for p in student.parameters()} - embedding), (pytest.approx(1e-2), embedding)]
    assert module.base_lrs["student"] == [1e-3, pytest.approx(1e-2)]  # lr schedules scale both alike
    # Groups a method already made (ArcFlow's rate head) are split in two, their options kept.
    others = [p for p in student.parameters() if id(p) not in embedding]
    groups = guidance_groups(
        [{"params": others[:2]}, {"params": [*others[2:], *student.net.guidance_embed.parameters()], "lr": 5.0}],
        student,
    )
    assert [(len(g["params"]), g.get("lr"), g.get("guidance", False)) for g in groups] == [
        (2, None, False),
        (len(others) - 2, 5.0, False),
        (len(embedding), 5.0, True),
    ]
    for bad in (0, -1, "fast"):
        with pytest.raises(ConfigError, match="student.guidance_lr_scale"):
            check_guidance_lr_scale(bad)


def test_evaluation_at_a_guidance_reaches_the_copies_a_method_samples_with():
    """Progressive distillation samples k NFE with its round-k snapshot, a copy outside the student:
    evaluation at ``guidance=w`` asks every sample for w through its condition, which that copy reads
    too, and changes no net's default."""
    torch.manual_seed(0)
    student = with_guidance_input(VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=2)), default_guidance=2.0)
    for p in student.parameters():  # a trained w embedding: a zero-initialised one would hide the bug
        nn.init.normal_(p, std=0.3)
    snapshot = copy.deepcopy(student)
    x, s, seeds = torch.randn(4, 2), torch.full((4,), 0.5), [0, 1, 2, 3]
    outputs = []
    for w in (1.0, 4.0):
        spec = EvalSpec(num_classes=2, guidance=w)
        with conditioned(seed_condition(seeds, spec)), torch.no_grad():
            outputs.append(snapshot(x, s))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    assert student.net.default_guidance == snapshot.net.default_guidance == 2.0
