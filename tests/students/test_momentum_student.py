"""ArcFlow's student: momentum heads on a teacher copy start as the teacher and integrate exactly."""

import pytest
import torch

from distill.core.momentum import advance, velocity_at
from distill.nets.denoiser import VelocityModel
from distill.nets.mlp import TimeMLP
from distill.students.momentum import MomentumStudent, momentum_student_from
from tests.methods.learning import tiny_unet_teacher


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_heads_start_as_the_teacher_velocity(kind):
    torch.manual_seed(0)
    model = tiny_unet_teacher().model if kind == "unet" else VelocityModel(TimeMLP((2,), width=32, depth=2))
    shape = (1, 8, 8) if kind == "unet" else (2,)
    student = MomentumStudent(model, components=4, bias_noise=0.0)
    x, s = torch.randn(3, *shape), torch.rand(3)
    m = student.mixture(x, s)
    assert m.means.shape == (3, 4, *shape)
    gate_shape = (3, 4, 1, 8, 8) if kind == "unet" else (3, 4, 2)
    assert m.weights.shape == gate_shape and m.rates.shape == gate_shape
    torch.testing.assert_close(m.weights.sum(1), torch.ones(gate_shape[:1] + gate_shape[2:]))
    assert (m.rates[:, 0] == 0).all() and (m.rates[:, 1:] != 0).all()
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), model(x, s), rtol=1e-5, atol=1e-5)
    # Initial rates are log-spaced over [0.2, 4] (the ArcFlow code's bias initialisation).
    torch.testing.assert_close(m.rates[0, 1:].flatten(1)[:, 0],
                               torch.logspace(torch.log10(torch.tensor(0.2)), torch.log10(torch.tensor(4.0)), 3).log())


def test_symmetry_is_broken_and_reloads_are_kept():
    torch.manual_seed(0)
    student = MomentumStudent(VelocityModel(TimeMLP((2,), width=32, depth=2)), components=3)
    m = student.mixture(torch.randn(2, 2), torch.rand(2))
    assert not torch.allclose(m.means[:, 0], m.means[:, 1])
    assert momentum_student_from(student, 3) is student


def test_step_of_the_student_matches_integrating_its_velocity():
    torch.manual_seed(0)
    student = MomentumStudent(VelocityModel(TimeMLP((2,), width=32, depth=2)), components=4).double()
    x, s_src = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.9, dtype=torch.float64)
    with torch.no_grad():
        m = student.mixture(x, s_src)
        closed = advance(x, m, s_src, s_src, s_src - 0.6)
        y, n = x.clone(), 2000
        for i in range(n):  # midpoint rule on the step's velocity profile
            y = y - 0.6 / n * velocity_at(m, torch.full((4,), 0.6 * (i + 0.5) / n, dtype=torch.float64))
    torch.testing.assert_close(closed, y, rtol=1e-6, atol=1e-6)


def test_edm_students_are_refused():
    with pytest.raises(ValueError, match="fm-scheme"):
        MomentumStudent(VelocityModel(TimeMLP((2,), width=16, depth=1), "edm"))
