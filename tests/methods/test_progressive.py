"""Progressive distillation: exact targets, rounds, and learning on the analytic teacher."""

import torch

from distill.core.gmm import ring_mixture
from distill.core.samplers import ddim_step
from distill.methods.progressive import ProgressiveDistillation, pd_target_x0
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import GMMTeacher


def test_target_reproduces_two_teacher_ddim_steps_exactly():
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    z_t = torch.randn(16, 2, dtype=torch.float64) * 1.3
    s_t, s_mid, s_s = (torch.full((16,), v, dtype=torch.float64) for v in (0.8, 0.6, 0.35))
    z_s = ddim_step(teacher, ddim_step(teacher, z_t, s_t, s_mid), s_mid, s_s)
    x_tilde = pd_target_x0(z_t, z_s, s_t, s_s)
    # The student's single DDIM step with x0 = x~ (so v = (z_t - x~) / s_t) must land on z_s.
    v_student = (z_t - x_tilde) / s_t[:, None]
    landed = z_t + (s_s - s_t)[:, None] * v_student
    torch.testing.assert_close(landed, z_s, rtol=0, atol=1e-12)
    # ... and it differs from the teacher's own x0 prediction (the two-step path correction).
    assert (x_tilde - teacher.x0(z_t, s_t)).abs().max() > 1e-3


def test_final_step_target_is_the_teachers_endpoint():
    teacher = GMMTeacher(ring_mixture())
    z_t = torch.randn(8, 2, dtype=torch.float64)
    s_t, s_mid, s_s = (torch.full((8,), v, dtype=torch.float64) for v in (0.5, 0.25, 0.0))
    z_s = ddim_step(teacher, ddim_step(teacher, z_t, s_t, s_mid), s_mid, s_s)
    torch.testing.assert_close(pd_target_x0(z_t, z_s, s_t, s_s), z_s)


def test_rounds_halve_steps_snapshot_and_reset_optimizer():
    method = ProgressiveDistillation(start_steps=8, final_steps=2, steps_per_round=3)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1))
    assert method.rounds == 2 and method.num_steps == 6
    events = [method.on_step_end(step, student) for step in range(6)]
    assert events == [[], [], ["student"], [], [], ["student"]]
    assert sorted(method.snapshots) == ["2", "4"]
    assert not any(p.requires_grad for p in method.snapshots["4"].parameters())
    assert method.lr_scale("student", 0) == 1.0 and abs(method.lr_scale("student", 2) - 1 / 3) < 1e-12


def test_budget_is_split_over_rounds_unless_given():
    method = ProgressiveDistillation(start_steps=32, final_steps=1)
    method.set_budget(1500)
    assert method.steps_per_round == 300 and method.num_steps == 1500
    fixed = ProgressiveDistillation(start_steps=32, steps_per_round=7)
    fixed.set_budget(1500)
    assert fixed.num_steps == 35


def test_one_round_learns_the_two_step_teacher():
    """Training the student on the 2-step teacher target brings its 1-step DDIM closer to it."""
    torch.manual_seed(0)
    teacher = GMMTeacher(ring_mixture())
    data = teacher.sample_data(4096)
    student = VelocityModel(TimeMLP((2,), width=128, depth=3))
    method = ProgressiveDistillation(start_steps=2, final_steps=1, steps_per_round=400, grid="uniform")
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)

    def gap() -> float:
        noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            target = ddim_step(
                teacher,
                ddim_step(teacher, noise, torch.ones(2000), torch.full((2000,), 0.5)),
                torch.full((2000,), 0.5),
                torch.zeros(2000),
            )
            return (method.sample(student, noise, 1) - target).pow(2).mean().item()

    before = gap()
    for step in range(300):
        loss = method.loss("student", data[torch.randint(0, 4096, (256,))], teacher, student, step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < 0.2 * before
