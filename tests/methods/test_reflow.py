"""Reflow + InstaFlow distillation: schedule, pair cache, and learning on the analytic teacher."""

from pathlib import Path

import pytest
import torch

from distill.core.straightness import ode_pairs
from distill.methods.reflow import Reflow
from distill.metrics.sliced_wasserstein import sliced_wasserstein
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from tests.methods.learning import evaluation_noise, ring_teacher_and_data, train_method


def mlp() -> VelocityModel:
    return VelocityModel(TimeMLP((2,), width=64, depth=2))


def test_stages_snapshot_the_flow_and_reset_the_optimizer(tmp_path: Path):
    teacher, data = ring_teacher_and_data(512)
    method = Reflow(
        rounds=2,
        steps_per_round=2,
        distill_steps=3,
        pairs_per_round=64,
        shard_size=32,
        ode_steps=4,
        pair_dir=str(tmp_path),
        straightness_samples=16,
    )
    student = mlp()
    assert method.num_steps == 7
    events = []
    for step in range(7):
        terms = method.loss("student", data[:8], teacher, student, step)
        assert set(terms) == {"loss", "reflow_stage", "straightness"}
        assert terms["straightness"] == method.straightness[min(step // 2, 2)]
        events.append(method.on_step_end(step, student))
    assert events == [[], ["student"], [], ["student"], [], [], ["student"]]
    assert int(method.stage) == 3 and method.distilling
    assert not any(p.requires_grad for p in method.snapshots["flow"].parameters())
    assert torch.isfinite(method.straightness).all()
    assert len(list(tmp_path.iterdir())) == 3  # one cache directory per (flow, stage)
    # Multi-step rows come from the reflowed flow, the 1-step row from the distilled student.
    noise, other = torch.randn(5, 2), mlp()
    with torch.no_grad():
        torch.testing.assert_close(method.sample(other, noise, 1), noise - other(noise, torch.ones(5)))
        torch.testing.assert_close(method.sample(other, noise, 2), method.sample(method.snapshots["flow"], noise, 2))


def test_without_distillation_the_final_flow_is_measured_and_sampled():
    teacher, data = ring_teacher_and_data(512)
    method = Reflow(
        rounds=1,
        steps_per_round=2,
        distill=False,
        pairs_per_round=32,
        shard_size=32,
        ode_steps=4,
        straightness_samples=16,
    )
    student = mlp()
    for step in range(2):
        method.loss("student", data[:8], teacher, student, step)
        method.on_step_end(step, student)
    assert torch.isfinite(method.straightness).all() and method.straightness.shape == (2,)
    noise, other = torch.randn(5, 2), mlp()
    with torch.no_grad():
        # The (EMA) student it is given samples every row, not the raw round-end snapshot.
        assert not torch.allclose(method.sample(other, noise, 2), method.sample(method.snapshots["flow"], noise, 2))


def test_budget_is_split_over_rounds_and_distillation():
    method = Reflow(rounds=2)
    method.set_budget(1500)
    assert method.steps_per_round == 500 and method.distill_steps == 500 and method.num_steps == 1500
    fixed = Reflow(rounds=1, steps_per_round=7, distill=False)
    fixed.set_budget(1500)
    assert fixed.num_steps == 7


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rounds": 0, "distill": False}, "method.objective.rounds"),
        ({"ode_sampler": "rk4"}, "method.objective.ode_sampler"),
        ({"shard_size": 0}, "method.objective.shard_size"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Reflow(**kwargs)


def train_reflow(rounds: int, teacher, data) -> tuple[Reflow, VelocityModel]:
    """Same seeds and the same 600-step budget, split evenly over the stages."""
    torch.manual_seed(0)
    student = mlp()
    method = Reflow(rounds=rounds, pairs_per_round=4096, shard_size=1024, straightness_samples=512)
    method.set_budget(600)
    torch.manual_seed(1)
    train_method(method, teacher, student, data, method.num_steps, lr=2e-3)
    return method, student


def test_reflow_straightens_the_flow_and_distils_better_in_one_step():
    teacher, data = ring_teacher_and_data()
    plain, plain_student = train_reflow(0, teacher, data)
    reflow, reflow_student = train_reflow(1, teacher, data)
    # The 2-rectified flow is far straighter than the teacher (the 1-rectified flow).
    assert reflow.straightness[1] < 0.05 * reflow.straightness[0]
    noise = evaluation_noise(2000)
    one_step = {
        name: m.sample(s, noise, 1)
        for name, m, s in (("plain", plain, plain_student), ("reflow", reflow, reflow_student))
    }
    # One step reproduces the flow it was distilled from far better when that flow is straight...
    plain_error = (one_step["plain"] - ode_pairs(teacher, noise, 64, "heun", "cosine")).pow(2).sum(1).mean()
    flow = reflow.snapshots["flow"]
    reflow_error = (one_step["reflow"] - ode_pairs(flow, noise, 64, "heun", "cosine")).pow(2).sum(1).mean()
    assert reflow_error < 0.2 * plain_error
    # ... and its samples are closer to the data.
    reference = data[:2000]
    assert sliced_wasserstein(one_step["reflow"], reference) < sliced_wasserstein(one_step["plain"], reference)


class _EpsUNet(torch.nn.Module):
    """A diffusers-style stand-in: ``net(sample, timestep).sample``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, sample, timestep):
        from types import SimpleNamespace

        return SimpleNamespace(sample=self.conv(sample) * (1 + timestep.view(-1, 1, 1, 1) / 1000))


def test_velocity_head_reads_the_unet_output_as_the_fm_velocity():
    # InstaFlow (gnobitab/InstaFlow code/pipeline_rf.py:638-668): v = unet(latents, 1000 t), raw latents in
    from distill.teachers.diffusers_dir import DiffusersVelocity, parameterization

    process, prediction, _ = parameterization(
        {
            "_class_name": "DDPMScheduler",
            "prediction_type": "epsilon",
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "num_train_timesteps": 1000,
        }
    )
    torch.manual_seed(0)
    student = DiffusersVelocity(_EpsUNet(), process, prediction)
    x, s = torch.randn(3, 2, 4, 4), torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        as_eps = student(x, s)
        head = Reflow(student_head="velocity").prepare_student(student)
        raw = student.net(x, 1000 * s).sample
        torch.testing.assert_close(head(x, s), raw)
    assert not torch.allclose(as_eps, raw, atol=1e-3)  # the epsilon reading differed
    assert head.scheme == "fm"  # so it exports to diffusers' FlowMatch scheduler, which reads this velocity
    assert Reflow().prepare_student(student) is student
    with pytest.raises(ValueError, match="method.objective.student_head"):
        Reflow(student_head="eps")


def test_condition_dropout_replaces_rows_with_the_null_condition():
    from distill.core.conditioning import LABELS, PROMPTS
    from distill.methods.reflow import with_null_rows

    drop = torch.tensor([True, False, True, False])
    labels = with_null_rows({LABELS: torch.arange(4)}, {LABELS: torch.tensor([10])}, drop)
    assert labels[LABELS].tolist() == [10, 1, 10, 3]
    prompts = torch.randn(4, 2, 3)
    empty = torch.zeros(1, 2, 3)
    mixed = with_null_rows({PROMPTS: prompts}, {PROMPTS: empty}, drop)[PROMPTS]
    assert (mixed[0] == 0).all() and (mixed[2] == 0).all() and torch.equal(mixed[1::2], prompts[1::2])
    with pytest.raises(ValueError, match="method.objective.condition_dropout"):
        with_null_rows({PROMPTS: prompts}, {LABELS: torch.tensor([10])}, drop)


def test_distillation_pairs_come_from_the_guided_reflowed_flow():
    # InstaFlow model card (XCLiu/instaflow_0_9B_from_sd_1_5): "the guidance scale of the teacher model,
    # 2-Rectified Flow, is set to 1.5" in the distillation stage
    from distill.core.conditioning import LABELS, conditioned, guided
    from distill.teachers.base import Teacher

    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=3)), (2,), guidance=2.0)
    student = VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=3))
    method = Reflow(
        rounds=1,
        steps_per_round=1,
        distill_steps=1,
        pairs_per_round=16,
        shard_size=16,
        ode_steps=3,
        straightness_samples=4,
        condition_dropout=0.5,
        distill_guidance=1.5,
    )
    x0 = torch.zeros(8, 2)
    method.loss("student", x0, teacher, student, 0)
    method.on_step_end(0, student)
    method.loss("student", x0, teacher, student, 1)  # opens the distillation stage's pairs
    noise, x_hat, labels = method._shards.shard(0)
    flow = method.snapshots["flow"]
    with conditioned({LABELS: labels}):
        expected = ode_pairs(lambda x, s: guided(flow, x, s, 1.5, teacher.null_condition), noise, 3, "heun", "cosine")
        unguided = ode_pairs(flow, noise, 3, "heun", "cosine")
    torch.testing.assert_close(x_hat, expected)
    assert not torch.allclose(x_hat, unguided, atol=1e-4)
    with pytest.raises(ValueError, match="method.objective.distill_guidance"):
        Reflow(rounds=0, distill_guidance=1.5)


def test_reflow_stage_trains_a_share_of_samples_on_the_null_condition():
    from distill.core.conditioning import LABELS, current_condition
    from distill.teachers.base import Teacher

    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1, num_classes=3)), (2,))
    method = Reflow(
        rounds=1,
        steps_per_round=1,
        distill=False,
        pairs_per_round=64,
        shard_size=64,
        ode_steps=2,
        straightness_samples=4,
        condition_dropout=0.5,
    )
    seen = []

    def student(x, s):
        seen.append(current_condition()[LABELS].clone())
        return torch.zeros_like(x)

    method.loss("student", torch.zeros(64, 2), teacher, student, 0)
    null = int(teacher.null_condition[LABELS])
    assert 16 < int((seen[-1] == null).sum()) < 48 and (seen[-1] < null).any()


def test_every_stage_warms_its_learning_rate_up_from_zero():
    # gnobitab/RectifiedFlow losses.py:40-46: lr * min(step / warmup, 1), and each stage is a fresh run
    teacher, data = ring_teacher_and_data(256)
    method = Reflow(
        rounds=1,
        steps_per_round=4,
        distill_steps=4,
        pairs_per_round=16,
        shard_size=16,
        ode_steps=2,
        straightness_samples=4,
        stage_warmup_steps=2,
    )
    student, scales = mlp(), []
    for step in range(8):
        scales.append(method.lr_scale("student", step))
        method.loss("student", data[:4], teacher, student, step)
        method.on_step_end(step, student)
    assert scales == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
