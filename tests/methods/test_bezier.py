"""Bezier distillation: several teachers (loaded, frozen, never checkpointed), control points,
the trajectory cache, gradients, reproducible sampling and learning on the ring mixture."""

from pathlib import Path

import pytest
import torch
from torch import nn

from distill.core.bezier import bezier
from distill.core.straightness import ode_states
from distill.lit.distill import DistillModule
from distill.methods.bezier import BezierDistillation, endpoint_of
from distill.metrics.sliced_wasserstein import sliced_wasserstein
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import Teacher
from tests.conftest import TINY_MLP, train_tiny_teacher
from tests.methods.learning import (
    assert_sampling_reproducible_per_sample,
    evaluation_noise,
    exact_endpoints,
    has_gradients,
    ring_teacher_and_data,
    train_method,
)

SMALL = {"num_pairs": 64, "shard_size": 32, "ode_steps": 4}


def mlp_student(method: BezierDistillation) -> nn.Module:
    torch.manual_seed(0)
    return method.prepare_student(VelocityModel(TimeMLP((2,), width=32, depth=2)))


class Shifted(nn.Module):
    """A teacher off by a constant velocity: its ODE endpoints sit about ``-shift`` from the exact ones."""

    def __init__(self, base: nn.Module, shift: tuple[float, float]):
        super().__init__()
        self.base, self.data_shape = base, (2,)
        self.register_buffer("shift", torch.tensor(shift))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.base(x, s) + self.shift.to(x)


@pytest.fixture(scope="module")
def two_teacher_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("teachers")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    first = train_tiny_teacher(root / "a", x, TINY_MLP, steps=5)
    second = train_tiny_teacher(root / "b", x + 1, TINY_MLP, steps=5)
    return [first, second]


def test_teachers_are_loaded_frozen_and_stay_out_of_the_checkpoint(two_teacher_dirs):
    teacher, data = ring_teacher_and_data(512)
    method = BezierDistillation(teachers=[str(d) for d in two_teacher_dirs], **SMALL)
    assert method.num_teachers == 2 and BezierDistillation().num_teachers == 1  # none listed: the run's
    one = BezierDistillation(teachers=str(two_teacher_dirs[1]), **SMALL)  # one path, not a list of characters
    assert one.num_teachers == 1
    pairs = zip(one.teachers[0].parameters(), method.teachers[1].parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert all(isinstance(t, Teacher) and not t.training for t in method.teachers)
    assert not any(p.requires_grad for t in method.teachers for p in t.parameters())
    student = mlp_student(method)
    module = DistillModule(teacher, student, method, lambda params: torch.optim.Adam(params))
    terms = method.loss("student", data[:16], teacher, student, 0)
    assert set(terms) == {"loss", "endpoint", "velocity", "curve", "teacher_spread"} and terms["teacher_spread"] > 0
    # Nothing of the listed teachers is in the state dict: it is exactly the run-teacher-only run's.
    single = DistillModule(
        teacher, mlp_student(method), BezierDistillation(**SMALL), lambda params: torch.optim.Adam(params)
    )
    assert set(module.state_dict()) == set(single.state_dict())
    assert not method.state_dict()


def test_gradients_reach_the_student_only(two_teacher_dirs):
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    method = BezierDistillation(teachers=[teacher, *(str(d) for d in two_teacher_dirs)], degree=3, **SMALL)
    student = mlp_student(method)
    method.loss("student", torch.randn(8, 2), teacher, student, 0)["loss"].backward()
    assert has_gradients(student)
    assert all(p.grad is None for t in method.teachers for p in t.parameters())


def test_control_points_options():
    eps = torch.randn(4, 2, dtype=torch.float64)
    # Two teachers whose states lie on known quadratics with the same P_1 and ends y and y + 2.
    y, p1, times = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), (0.75, 0.5, 0.25)

    def states(end):
        curve = torch.stack([eps, p1, end])
        return torch.stack([*(bezier(curve, torch.full((4,), 1 - s, dtype=torch.float64)) for s in times), end], 1)

    both = torch.stack([states(y), states(y + 2)], 1)  # (B, teachers, record times + 1, 2)
    fitted = BezierDistillation(record_times=times, endpoint="mean").control_points(eps, both)
    torch.testing.assert_close(fitted, torch.stack([eps, p1, y + 1]))  # the mean trajectory's curve
    fitted = BezierDistillation(record_times=times, endpoint=0).control_points(eps, both)
    torch.testing.assert_close(fitted[-1], y)  # the first teacher's end, P_1 fitted to both teachers
    guided = BezierDistillation(control="guide", degree=3).control_points(eps, both)
    torch.testing.assert_close(guided, torch.stack([eps, y + 1, y + 1, y]))  # P_1 = P_2 = mean, P_3 = first
    line = BezierDistillation(degree=1, endpoint="mean").control_points(eps, both)
    torch.testing.assert_close(line, torch.stack([eps, y + 1]))


def test_medoid_endpoint_is_the_consensus_teacher_per_sample():
    ends = torch.tensor([[[0.0], [5.0]], [[1.0], [9.0]], [[3.0], [8.0]]])  # (teachers 3, batch 2, 1)
    torch.testing.assert_close(endpoint_of(ends, "medoid"), torch.tensor([[1.0], [8.0]]))
    torch.testing.assert_close(endpoint_of(ends, "mean"), ends.mean(0))
    torch.testing.assert_close(endpoint_of(ends, 2), ends[2])


def test_trajectories_are_cached_and_read_back_without_solving(tmp_path):
    teacher, data = ring_teacher_and_data(512)
    calls = []

    class Counting(nn.Module):
        data_shape = (2,)

        def __init__(self):
            super().__init__()
            self.register_buffer("tag", torch.ones(1))  # hashed by its state, not by probing it

        def forward(self, x, s):
            calls.append(len(x))
            return teacher(x, s)

    method = BezierDistillation(teachers=[Counting(), Shifted(teacher, (0.3, 0.0))], pair_dir=str(tmp_path), **SMALL)
    eps, states, _ = method.batch_trajectories(teacher, data[:8])
    assert states.shape == (8, 2, 4, 2) and calls
    shards = method._shards
    first = [shards[i] for i in range(2)]
    calls.clear()
    again = BezierDistillation(teachers=[Counting(), Shifted(teacher, (0.3, 0.0))], pair_dir=str(tmp_path), **SMALL)
    again.batch_trajectories(teacher, data[:8])
    for i in range(2):
        torch.testing.assert_close(again._shards[i], first[i])
    assert not calls  # a resumed run reads every shard back
    assert len(list(tmp_path.iterdir())) == 1


def test_an_ensemble_solves_one_ode_of_the_mean_velocity():
    teacher, data = ring_teacher_and_data(64)
    left, right = Shifted(teacher, (0.4, 0.0)), Shifted(teacher, (-0.4, 0.0))
    method = BezierDistillation(teachers=[left, right], combine="ensemble", **SMALL)
    assert method.num_teachers == 2 and method.num_trajectories == 1
    eps, states, _ = method.batch_trajectories(None, data[:8])
    assert states.shape == (8, 1, 4, 2)
    # The shifts cancel in the mean velocity: the ensemble is the exact teacher.
    exact = ode_states(teacher, eps, (0.75, 0.5, 0.25, 0.0), 4, "heun", "cosine").movedim(0, 1)
    torch.testing.assert_close(states[:, 0], exact, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="method.objective.endpoint"):
        BezierDistillation(teachers=[left, right], combine="ensemble", endpoint=1)


def test_bad_teachers_are_refused_by_their_index():
    teacher, data = ring_teacher_and_data(64)
    student = mlp_student(BezierDistillation())
    wrong = Teacher(VelocityModel(TimeMLP((3,), width=8, depth=1)), (3,))
    with pytest.raises(ValueError, match=r"method.objective.teachers\[0\] makes samples of shape \(3,\)"):
        BezierDistillation(teachers=[wrong], **SMALL).loss("student", data[:4], teacher, student, 0)
    with pytest.raises(ValueError, match=r"method.objective.teachers\[1\] repeats"):
        BezierDistillation(teachers=[teacher, teacher], **SMALL).loss("student", data[:4], teacher, student, 0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"control": "spline"}, "method.objective.control"),
        ({"endpoint": "best"}, "method.objective.endpoint"),
        ({"degree": 0}, "method.objective.degree"),
        ({"endpoint": 1}, "method.objective.endpoint"),
        ({"combine": "max"}, "method.objective.combine"),
        ({"record_times": [1.0]}, "method.objective.record_times"),
        ({"degree": 4, "record_times": [0.5, 0.2]}, "method.objective.record_times"),
        ({"ode_grid": "log"}, "unknown grid"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        BezierDistillation(**kwargs)


def test_sampling_is_reproducible_per_sample():
    method = BezierDistillation()
    student = mlp_student(method)
    for nfe in (1, 2, 4):
        assert_sampling_reproducible_per_sample(method, student, nfe)


def train_bezier(teachers: list[nn.Module], data: torch.Tensor) -> tuple[BezierDistillation, nn.Module]:
    method = BezierDistillation(teachers=teachers, endpoint="mean", num_pairs=2048, shard_size=512, ode_steps=8)
    student = mlp_student(method)
    torch.manual_seed(1)
    train_method(method, None, student, data, 250, lr=3e-3, batch_size=128)
    return method, student


def test_two_opposite_teachers_distil_better_than_either_alone():
    """Teachers off by +-0.4 in x: their mean endpoints (nearly) cancel the error, one alone cannot."""
    teacher, data = ring_teacher_and_data()
    left, right = Shifted(teacher, (0.4, 0.0)), Shifted(teacher, (-0.4, 0.0))
    noise = evaluation_noise(2000)
    exact = exact_endpoints(teacher, noise, grid="cosine")
    errors, samples = {}, {}
    for name, teachers in (("single", [left]), ("multi", [left, right])):
        method, student = train_bezier(teachers, data)
        for nfe in (1, 2):
            samples[name, nfe] = method.sample(student, noise, nfe)
            errors[name, nfe] = (samples[name, nfe].double() - exact).pow(2).sum(1).mean().item()
    for nfe in (1, 2):
        assert errors["multi", nfe] < 0.5 * errors["single", nfe]
        assert sliced_wasserstein(samples["multi", nfe], data[:2000]) < sliced_wasserstein(
            samples["single", nfe], data[:2000]
        )
    assert errors["multi", 1] < 0.25  # near the exact ODE endpoints (ring radius 2, mode std 0.15)
