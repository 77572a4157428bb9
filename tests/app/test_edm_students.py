"""EDM teachers in the distribution-matching methods and as LoRA students, from the command line:
DMD2's GAN heads and GDD's discriminator find an EDM UNet's features without naming layers, and
``student=lora`` trains adapters on EDM's own layers over the teacher's weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.build import build_datamodule, build_module, build_teacher
from distill.students.weight_lora import WeightLora
from distill.train import train
from tests.teachers.edm_pickles import tiny_edm, write_edm_pickle


def edm_pickle(tmp_path: Path, kind: str) -> Path:
    net, kwargs = tiny_edm(kind, channels=1, resolution=8)
    return write_edm_pickle(tmp_path / f"{kind}.pkl", net, kwargs, tmp_path / "executed")


@pytest.mark.parametrize(("method", "kind"), [("dmd2", "dhariwal"), ("gdd_i", "song")])
def test_gan_features_of_an_edm_teacher_are_found_without_naming_layers(compose_train, tmp_path, method, kind):
    cfg = compose_train(f"method={method}", "debug=fast", "teacher=edm", f"teacher.path={edm_pickle(tmp_path, kind)}")
    assert cfg.method.objective.get("gan_layers") is None and cfg.method.objective.get("feature_layers") is None
    train(cfg)
    assert (Path(cfg.paths.output_dir) / "results.json").is_file()


def test_lora_student_on_an_edm_teacher_trains_adapters_over_shared_weights(compose_train, tmp_path):
    cfg = compose_train(
        "student=lora",
        "method=progressive",
        "debug=fast",
        "teacher=edm",
        f"teacher.path={edm_pickle(tmp_path, 'song')}",
    )
    teacher = build_teacher(cfg, build_datamodule(cfg))
    student = build_module(cfg, teacher).student
    assert any(isinstance(m, WeightLora) for m in student.modules())  # the default targets reach EDM's layers
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    teacher_tensors = {p.data_ptr() for p in teacher.model.parameters()}
    assert all(p.data_ptr() in teacher_tensors for p in student.parameters() if not p.requires_grad)
    train(cfg)
    assert (Path(cfg.paths.output_dir) / "results.json").is_file()
