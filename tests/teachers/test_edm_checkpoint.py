"""EDM / EDM2 pickles: read without running their code, converted to native networks and teachers."""

from __future__ import annotations

import builtins
import copy
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.convert_edm import main as convert_main
from distill.core.conditioning import conditioned
from distill.nets.edm_layers import UNetBlock
from distill.teachers import load_teacher
from distill.teachers.edm import EDMVelocity, load_edm_teacher
from distill.teachers.edm_checkpoint import network_from_pickle
from distill.teachers.edm_pickle import EDMPickleError, read_edm_pickle
from tests.teachers.edm_pickles import (
    PersistentStub,
    fake_persistence,
    marker_source,
    tiny_edm,
    write_edm_pickle,
)


@pytest.fixture
def marker(tmp_path):
    """A file that appears only if code from a pickle runs; absent after every test."""
    path = tmp_path / "executed"
    yield path
    assert not path.exists(), "code from the pickle was executed"


def inputs(label_dim: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(1)
    labels = F.one_hot(torch.tensor([0, 3, 9]), label_dim).float() if label_dim else None
    return torch.randn(3, channels, 8, 8), torch.tensor([0.02, 1.0, 40.0]), labels


@pytest.mark.parametrize(("kind", "label_dim"), [("song", 0), ("dhariwal", 10), ("edm2", 10), ("edm2", 0)])
def test_converted_network_equals_the_pickled_one(tmp_path, marker, kind, label_dim):
    net, kwargs = tiny_edm(kind, label_dim=label_dim)
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker)
    assert "torch_utils" not in sys.modules  # read with no persistence module to run anything
    converted, spec = network_from_pickle(path)
    assert type(converted) is type(net) and spec["init_kwargs"] == kwargs
    x, sigma, labels = inputs(label_dim)
    torch.testing.assert_close(converted(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)


def test_edm2_training_snapshot_with_its_encoder_and_half_weights(tmp_path, marker):
    """As edm2's training loop writes it: an EasyDict, the ema net in float16, a latent encoder whose
    scale and bias are numpy arrays (recorded in the spec, never loaded)."""
    net, kwargs = tiny_edm("edm2", label_dim=10)
    encoder = PersistentStub(
        "StabilityVAEEncoder",
        {
            "vae_name": "stabilityai/sd-vae-ft-mse",
            "scale": np.float32(0.5) / np.array([4.17, 4.62], np.float32),
            "batch_size": 8,
            "_vae": None,
            "_init_kwargs": {},
        },
    )
    half = copy.deepcopy(net).half()
    path = write_edm_pickle(tmp_path / "snapshot.pkl", half, kwargs, marker, {"encoder": encoder}, easydict=True)
    converted, spec = network_from_pickle(path)
    assert spec["encoder"]["vae_name"] == "stabilityai/sd-vae-ft-mse" and len(spec["encoder"]["scale"]) == 2
    x, sigma, labels = inputs(10)
    torch.testing.assert_close(converted(x, sigma, labels), half.float()(x, sigma, labels), rtol=0, atol=0)


def test_pickle_records_networks_without_their_source(tmp_path, marker):
    net, kwargs = tiny_edm("song")
    top = read_edm_pickle(write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker))
    record = top["ema"]
    assert record.class_name == "EDMPrecond" and record.init_kwargs == kwargs
    assert "module_src" not in record.state and top["loss_fn"] is None


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').write('x')",)


@pytest.mark.parametrize("payload", [SystemCall, Eval])
def test_malicious_pickles_are_refused_with_no_side_effect(tmp_path, marker, payload):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": payload(marker)}))
    with pytest.raises(EDMPickleError, match=r"(posix|os|builtins)\.(system|eval).*refused"):
        network_from_pickle(path)


def test_a_global_hidden_in_a_network_state_is_refused(tmp_path, marker):
    net, kwargs = tiny_edm("song")
    net.hook = Eval(marker)  # rides along in the module's __dict__
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker)
    with pytest.raises(EDMPickleError, match="builtins.eval"):
        read_edm_pickle(path)


def test_torch_save_files_are_not_mistaken_for_edm_pickles(tmp_path):
    path = tmp_path / "model.pkl"
    torch.save({"ema": torch.zeros(2)}, path)
    with pytest.raises(EDMPickleError, match="not a readable EDM pickle"):
        read_edm_pickle(path)


def test_weights_that_do_not_fit_the_recorded_kwargs_are_reported(tmp_path, marker):
    net, kwargs = tiny_edm("song")
    path = write_edm_pickle(tmp_path / "net.pkl", net, {**kwargs, "num_blocks": 2}, marker)
    with pytest.raises(EDMPickleError, match=r"\d+ missing \(model\..*unexpected"):
        network_from_pickle(path)


def test_bare_networks_without_preconditioning_are_refused(tmp_path, marker):
    net, kwargs = tiny_edm("song")
    with fake_persistence() as reconstruct:
        meta = dict(
            type="class", version=6, module_src=marker_source(marker), class_name="SongUNet", state={"_init_kwargs": {}}
        )
        payload = pickle.dumps({"ema": _Persistent(reconstruct, meta)})
    (tmp_path / "bare.pkl").write_bytes(payload)
    with pytest.raises(EDMPickleError, match="SongUNet.*supported networks"):
        network_from_pickle(tmp_path / "bare.pkl")


class _Persistent:
    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def test_converted_directory_loads_as_a_pretrained_teacher(tmp_path, marker):
    net, kwargs = tiny_edm("dhariwal", label_dim=10)
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker)
    convert_main([str(path), str(tmp_path / "converted")])
    config = json.loads((tmp_path / "converted" / "teacher.json").read_text())
    assert config["kind"] == "edm" and config["edm_class"] == "EDMPrecond" and config["data_shape"] == [1, 8, 8]
    teacher = load_teacher(tmp_path / "converted")
    assert (
        isinstance(teacher.model, EDMVelocity) and teacher.num_classes == 10 and teacher.model.data_shape == (1, 8, 8)
    )
    x, sigma, labels = inputs(10)
    torch.testing.assert_close(teacher.model.net(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)


def test_pickles_are_converted_once_into_the_cache(tmp_path, marker, monkeypatch):
    net, kwargs = tiny_edm("song")
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker)
    load_edm_teacher(path, tmp_path / "cache")
    (converted,) = (tmp_path / "cache").iterdir()
    assert converted.name.startswith("net-") and (converted / "model.safetensors").is_file()
    monkeypatch.setattr("distill.teachers.edm.convert_edm_pickle", lambda *a: pytest.fail("converted twice"))
    load_edm_teacher(path, tmp_path / "cache")


@pytest.mark.parametrize("kind", ["song", "edm2"])
def test_teacher_velocity_is_the_edm_denoisers(tmp_path, marker, kind):
    net, kwargs = tiny_edm(kind)
    teacher = load_edm_teacher(write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker))
    x_s, s = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    sigma = s / (1 - s)  # FM time -> EDM noise level; x_sigma = x_s (1 + sigma)
    expected = net(x_s * (1 + sigma).view(-1, 1, 1, 1), sigma)
    torch.testing.assert_close(teacher.x0(x_s, s), expected, rtol=1e-4, atol=1e-5)


def test_conditional_teacher_takes_one_hot_labels_and_refuses_guidance(tmp_path, marker):
    net, kwargs = tiny_edm("edm2", label_dim=10)
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, marker)
    teacher = load_edm_teacher(path)
    x_s, s = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    labels = torch.tensor([1, 4, 9])
    with conditioned(labels):
        x0 = teacher.x0(x_s, s)
    torch.testing.assert_close(x0, net(2 * x_s, torch.ones(3), F.one_hot(labels, 10).float()), rtol=1e-4, atol=1e-5)
    with pytest.raises(EDMPickleError, match="without a null class"):
        load_edm_teacher(path, guidance=2.0)
    with conditioned(torch.full((3,), 10)), pytest.raises(ValueError, match="null class"):
        teacher(x_s, s)


def test_train_dropout_sets_the_rate_of_every_block_the_copies_train_with(tmp_path):
    net, kwargs = tiny_edm("song", channels=1, resolution=8)
    path = write_edm_pickle(tmp_path / "net.pkl", net, kwargs, tmp_path / "executed")
    teacher = load_edm_teacher(path, train_dropout=0.2)
    rates = {m.dropout for m in teacher.model.modules() if isinstance(m, UNetBlock)}
    assert rates == {0.2}
    with pytest.raises(EDMPickleError, match="train_dropout"):
        load_edm_teacher(path, train_dropout=1.0)
