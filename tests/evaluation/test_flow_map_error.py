"""Flow-map error: 1-NFE student samples against the teacher's ODE endpoints from the same noise."""

import json
from pathlib import Path

import torch

from distill.core.gmm import ring_mixture
from distill.core.grids import make_grid
from distill.core.samplers import sample_heun
from distill.evaluation.runner import (
    FLOW_MAP_METRIC,
    EvalSpec,
    evaluate_flow_map,
    generate,
    teacher_ode_endpoints,
)
from distill.table import markdown_table, write_benchmark
from distill.teachers import GMMTeacher
from distill.train import train


class FixedSampler:
    """A stand-in method whose one-step sampler is any function of the noise."""

    name = "fixed"

    def __init__(self, fn):
        self.fn = fn

    def sample(self, student, noise, nfe, renoise=None):
        return self.fn(noise)


def test_endpoints_are_the_fine_teacher_ode_and_a_perfect_map_scores_zero():
    teacher = GMMTeacher(ring_mixture())
    spec = EvalSpec(num_samples=64, batch_size=32, progress=False)
    endpoints = teacher_ode_endpoints(teacher, (2,), spec, steps=128)
    noise = generate(lambda z, r: z, (2,), spec)
    torch.testing.assert_close(endpoints, sample_heun(teacher, noise, make_grid("cosine", 128)))

    perfect = FixedSampler(lambda z: sample_heun(teacher, z, make_grid("cosine", 128).to(z)))
    assert evaluate_flow_map(perfect, None, endpoints, (2,), spec, step=7).value < 1e-10
    identity = evaluate_flow_map(FixedSampler(lambda z: z), None, endpoints, (2,), spec, step=7)
    expected = (noise - endpoints).pow(2).sum(1).mean().item()
    assert abs(identity.value - expected) < 1e-5
    assert (identity.metric, identity.nfe, identity.step) == (FLOW_MAP_METRIC, 1, 7)


def test_training_run_records_the_flow_map_error_and_the_table_shows_it(compose_train, tmp_path):
    cfg = compose_train(
        "dataset=gmm",
        "teacher=gmm_exact",
        "student=mlp",
        "method=consistency",
        "eval=fast",
        "train.max_steps=4",
        "eval.every_n_steps=2",
        "eval.flow_map_error=true",
        "eval.teacher=false",
    )
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    flow = sorted((r["step"], r["value"]) for r in rows if r["metric"] == FLOW_MAP_METRIC)
    assert [step for step, _ in flow] == [2, 4]
    assert all(value > 0 for _, value in flow)
    agg = write_benchmark([cfg.paths.output_dir], tmp_path / "table")
    assert f"({FLOW_MAP_METRIC}, lower is better)" in markdown_table(agg)
    assert (tmp_path / "table" / "flow_map_error.png").is_file()
