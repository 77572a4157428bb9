"""init_from without Hydra: which weights are taken, and in which order around prepare_student."""

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.lit.init_from import load_student_init
from distill.methods.meanflow import MeanFlow
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from tests.helpers.modules import fit, make_module


def student(width: int = 32) -> nn.Module:
    return VelocityModel(TimeMLP((2,), width=width, depth=1))


@pytest.fixture
def trained(tmp_path):
    """A PD module after 4 steps with one EMA copy, saved as a Lightning checkpoint."""
    module = make_module(steps_per_round=100)
    fit(module, 4, tmp_path).save_checkpoint(tmp_path / "last.ckpt")
    return module, tmp_path / "last.ckpt"


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_takes_the_sampling_ema_or_the_raw_student(trained, capsys):
    module, ckpt = trained
    assert_same(load_student_init(student(), ckpt), module.sampling_student())
    assert "EMA copy 0" in capsys.readouterr().out
    assert_same(load_student_init(student(), ckpt, ema=False), module.student)
    assert "raw student" in capsys.readouterr().out


def test_plain_weights_are_loaded_before_the_method_reparameterizes(trained):
    module, ckpt = trained
    prepared = load_student_init(student(), ckpt, prepare=MeanFlow().prepare_student)
    loaded = module.sampling_student().state_dict()
    state = prepared.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.items())  # same keys: AverageVelocityModel.net.*
    assert set(state) > set(loaded)  # plus the new time input


def test_reparameterized_weights_load_after_prepare_and_nowhere_else(tmp_path):
    source = MeanFlow().prepare_student(student())
    torch.save({"state_dict": {f"student.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "mf.ckpt")
    assert_same(load_student_init(student(), tmp_path / "mf.ckpt", prepare=MeanFlow().prepare_student), source)
    with pytest.raises(ConfigError, match="re-parameterized"):
        load_student_init(student(), tmp_path / "mf.ckpt")


def test_architecture_mismatch_names_the_keys_and_the_fix(trained):
    _, ckpt = trained
    with pytest.raises(ConfigError, match=r"(?s)shape-mismatched.*net\..*Fix: set init_from to a run whose") as err:
        load_student_init(student(width=16), ckpt, target="run B")
    assert str(ckpt) in str(err.value) and "run B" in str(err.value)


@pytest.mark.parametrize(
    ("content", "needle"), [(b"not a checkpoint", "not a readable checkpoint"), (None, "holds no 'state_dict'")]
)
def test_unreadable_files_name_the_path_and_the_fix(tmp_path, content, needle):
    path = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"weights": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        load_student_init(student(), path)
    assert str(path) in str(err.value) and "init_from=<run dir" in str(err.value)


def test_missing_sources_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*init_from=<run dir"):
        load_student_init(student(), tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="has no checkpoints/last.ckpt.*init_from=<run dir"):
        load_student_init(student(), tmp_path)
