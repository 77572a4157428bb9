"""Teacher checkpoints: round trip, and errors that name the fix."""

import pytest
import torch

from distill.nets.factory import build_net
from distill.nets.velocity import VelocityModel
from distill.teachers import TeacherCheckpointError, load_teacher, save_teacher

SPEC = {"type": "mlp", "width": 32, "depth": 1}


@pytest.mark.parametrize("scheme", ["fm", "edm"])
def test_round_trip_gives_identical_outputs(tmp_path, scheme):
    model = VelocityModel(build_net(SPEC, (2,)), scheme)
    save_teacher(tmp_path / "t", model, SPEC, (2,), {"dataset": "moons"})
    teacher = load_teacher(tmp_path / "t")
    x, s = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(teacher(x, s), model(x, s))
    assert teacher.meta["dataset"] == "moons" and teacher.data_shape == (2,)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training


def test_missing_directory_names_pretrain(tmp_path):
    with pytest.raises(TeacherCheckpointError, match="distill-pretrain"):
        load_teacher(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "target"),
    [("digits_2rf", "make teacher-reflow"), ("digits_s1", "make teachers-extra"), ("digits_w", "make teachers-extra")],
)
def test_a_missing_extra_teacher_names_the_target_that_builds_it(tmp_path, name, target):
    with pytest.raises(TeacherCheckpointError, match=f"does not exist: build it with `{target}`"):
        load_teacher(tmp_path / name)


def test_missing_weights_and_corrupt_files(tmp_path):
    model = VelocityModel(build_net(SPEC, (2,)))
    save_teacher(tmp_path / "t", model, SPEC, (2,))
    (tmp_path / "t" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TeacherCheckpointError, match="corrupt"):
        load_teacher(tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").unlink()
    with pytest.raises(TeacherCheckpointError, match="without weights"):
        load_teacher(tmp_path / "t")


def test_non_finite_weights_are_never_saved(tmp_path):
    model = VelocityModel(build_net(SPEC, (2,)))
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_teacher(tmp_path / "t", model, SPEC, (2,))
    assert not (tmp_path / "t" / "model.safetensors").exists()
