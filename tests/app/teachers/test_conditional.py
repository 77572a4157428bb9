"""Class-conditional teachers: labels flow from the batch into every network call, classifier-free
guidance folds into the student, evaluation asks each seed for a class and scores whether the
sample shows it; wrong combinations fail before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_teacher
from distill.errors import ConfigError
from distill.train import train
from tests.conftest import TINY_UNET, train_tiny_teacher


@pytest.fixture(scope="module")
def conditional_teacher(cache_dir, tmp_path_factory) -> Path:
    from distill.data import DataModule

    dm = DataModule(name="digits", batch_size=64)
    dm.setup()
    return train_tiny_teacher(
        tmp_path_factory.mktemp("cond") / "teacher", dm.train_tensor(), {**TINY_UNET, "num_classes": 10}, steps=20
    )


@pytest.mark.parametrize(
    "method",
    ["dmd2", pytest.param("progressive", marks=pytest.mark.slow), pytest.param("arcflow", marks=pytest.mark.slow)],
)
def test_conditional_distillation_with_guidance_scores_class_accuracy(compose_train, conditional_teacher, method):
    cfg = compose_train(f"method={method}", "debug=fast", f"teacher.path={conditional_teacher}", "teacher.guidance=2.0")
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    accuracy = [r for r in rows if r["metric"] == "class_accuracy"]
    assert {r["model"] for r in accuracy} == {"teacher", "student"}
    assert all(0.0 <= r["value"] <= 1.0 for r in accuracy)


def test_labels_reach_the_teacher_inside_a_training_step(compose_train, conditional_teacher, monkeypatch):
    from distill.core import conditioning

    seen = []
    original = conditioning.labels_for
    monkeypatch.setattr("distill.nets.unet.labels_for", lambda x: seen.append(original(x)) or original(x))
    cfg = compose_train(
        "method=progressive",
        "debug=fast",
        f"teacher.path={conditional_teacher}",
        "eval.teacher=false",
        "eval.student_nfes=[1]",
    )
    train(cfg)
    labelled = [c for c in seen if c is not None]
    assert labelled and all(c.dtype == torch.long and int(c.max()) < 10 for c in labelled)


def test_bad_conditioning_combinations_fail_early(compose_train, conditional_teacher):
    cfg = compose_train("teacher.guidance=2.0")  # the cached digits teacher is unconditional
    with pytest.raises(ConfigError, match="needs a conditional teacher"):
        build_teacher(cfg, build_datamodule(cfg))
    cfg = compose_train("dataset=moons", f"teacher.path={conditional_teacher}")
    with pytest.raises(ConfigError, match="conditioned on 10 classes but dataset=moons has no labels"):
        build_teacher(cfg, build_datamodule(cfg))


def test_methods_with_unlabelled_pair_sets_refuse_conditional_teachers(compose_train, conditional_teacher):
    from distill.build import build_module

    cfg = compose_train("method=dmd", f"teacher.path={conditional_teacher}")
    with pytest.raises(ConfigError, match="carry no class labels"):
        build_module(cfg, build_teacher(cfg, build_datamodule(cfg)))


def test_conditional_reflow_solves_labelled_pairs_under_guidance_and_trains_on_them(compose_train, conditional_teacher):
    from safetensors.torch import load_file

    from distill.core.pairs import shard_labels

    cfg = compose_train(
        "method=reflow",
        "debug=fast",
        f"teacher.path={conditional_teacher}",
        "teacher.guidance=2.0",
        "method.objective.shard_size=16",
        "method.objective.ode_steps=4",
    )
    train(cfg)
    shards = list((Path(cfg.paths.cache) / "reflow_pairs").rglob("shard_*.safetensors"))
    assert shards
    stored = load_file(shards[0])
    index = int(shards[0].stem.split("_")[1])
    assert stored["labels"].dtype == torch.long and int(stored["labels"].max()) < 10  # never the null class
    assert torch.equal(stored["labels"], shard_labels((cfg.seed, 0), index, 16, 10))  # fixed by the seed
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["model"] for r in rows if r["metric"] == "class_accuracy"} == {"teacher", "student"}


def test_conditional_reflow_pairs_are_solved_under_their_own_labels(conditional_teacher):
    from distill.core.conditioning import conditioned
    from distill.core.straightness import ode_pairs
    from distill.methods import Reflow
    from distill.teachers import load_teacher

    teacher = load_teacher(conditional_teacher)
    teacher.guidance = 2.0
    method = Reflow(rounds=1, pairs_per_round=8, shard_size=8, ode_steps=3)
    method.set_budget(4)
    x0 = torch.zeros(4, 1, 8, 8)
    with conditioned(torch.zeros(4, dtype=torch.long)):  # the data batch's labels must not leak into pairs
        method.loss("student", x0, teacher, teacher.model, 0)
    noise, endpoint, labels = method._shards.shard(0)
    assert labels is not None and len(set(labels.tolist())) > 1
    with conditioned(labels):
        expected = ode_pairs(teacher, noise, 3, "heun", "cosine")  # the guided teacher ODE under each pair's label
    torch.testing.assert_close(endpoint, expected)


def test_conditional_bezier_trajectories_carry_their_labels(conditional_teacher):
    from distill.core.conditioning import conditioned
    from distill.core.straightness import ode_states
    from distill.methods import BezierDistillation
    from distill.teachers import load_teacher

    teacher = load_teacher(conditional_teacher)
    teacher.guidance = 2.0
    method = BezierDistillation(num_pairs=8, shard_size=8, ode_steps=3)
    with conditioned(torch.zeros(4, dtype=torch.long)):  # the data batch's labels must not leak into trajectories
        eps, _, batch_labels = method.batch_trajectories(teacher, torch.zeros(4, 1, 8, 8))
    assert batch_labels.shape == (4,)  # the student trains under these (our class-conditional UNet cannot
    noise, states, labels = method._shards.shard(0)  # take Bezier's extra time input; diffusers students can)
    assert labels is not None and len(set(labels.tolist())) > 1
    with conditioned(labels):
        expected = ode_states(teacher, noise, (*method.record_times, 0.0), 3, method.ode_sampler, method.ode_grid)
    torch.testing.assert_close(states[:, 0], expected.movedim(1, 0))
