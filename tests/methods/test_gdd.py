"""GDD / GDD-I: frozen layers stay bit-identical, the discriminator reads frozen features, the
update alternation, an external feature network from a local file, and learning the ring mixture."""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from distill.methods import GDD
from distill.nets.feature_network import FrozenFeatureNetwork
from distill.nets.freezing import frozen_parameter_names
from distill.teachers import load_teacher
from distill.train import train
from tests.methods.learning import (
    has_gradients,
    one_step_ring_quality_before_after,
    tiny_unet_teacher,
    train_phases,
)


def test_conv_rule_freezes_exactly_the_convolutions():
    student = tiny_unet_teacher().model
    names = frozen_parameter_names(student, "conv")
    convs = {n for n, m in student.named_modules() if isinstance(m, nn.Conv2d)}
    assert names == {f"{c}.{p}" for c in convs for p in ("weight", "bias")}
    assert frozen_parameter_names(student, "none") == set()
    assert frozen_parameter_names(student, ["*conv_in*"]) == {"net.model.conv_in.weight", "net.model.conv_in.bias"}
    with pytest.raises(ValueError, match="frozen_layers"):
        frozen_parameter_names(student, "attention")


def test_gdd_i_trains_only_what_is_not_frozen_and_keeps_frozen_layers_bit_identical():
    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = GDD(frozen_layers="conv", r1_gamma=1e-2)
    method.attach(teacher, student)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if n in method.frozen_names}
    trainable = {n: p.detach().clone() for n, p in student.named_parameters() if n not in method.frozen_names}
    assert frozen and 0 < method.fraction < 0.5  # a UNet is mostly convolutions
    data = torch.randn(64, 1, 8, 8).clamp(-1, 1)
    train_phases(method, teacher, student, data, 3, 1e-2, batch_size=8)
    now = dict(student.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in frozen.items())
    assert any(not torch.equal(now[n], p) for n, p in trainable.items())
    ids = {id(p) for p in method.trainable_parameters("student", student)}
    assert not ids & {id(now[n]) for n in frozen}


def test_each_phase_reaches_only_its_own_networks_and_never_the_teacher():
    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = GDD(r1_gamma=1e-2)
    method.attach(teacher, student)
    x0 = torch.randn(4, 1, 8, 8)
    for phase, owners in {"student": {"student"}, "discriminator": {"heads"}}.items():
        nets = {"student": student, "heads": method.heads, "teacher": teacher}
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        terms = method.loss(phase, x0, teacher, student, 0)
        terms["loss"].backward()
        assert {name for name, net in nets.items() if has_gradients(net)} == owners, phase
    assert "r1" in terms and terms["r1"] > 0


def test_discriminator_reads_the_teacher_encoder_at_every_scale():
    teacher = tiny_unet_teacher()
    method = GDD()
    method.attach(teacher, copy.deepcopy(teacher.model).requires_grad_(True))
    features = method.features(torch.randn(3, 1, 8, 8), teacher)
    # down block 0 (downsampled to 4x4), down block 1 (last level: no downsampling), middle block
    assert [tuple(f.shape) for f in features] == [(3, 8, 4, 4), (3, 16, 4, 4), (3, 16, 4, 4)]
    assert len(method.heads.heads) == 3


def test_external_feature_network_loads_local_weights_and_stays_frozen(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1))
    save_file(net.state_dict(), str(tmp_path / "features.safetensors"))
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1))
    features = FrozenFeatureNetwork(
        fresh, layers=["0", "2"], weights=str(tmp_path / "features.safetensors"), input_size=16
    )
    torch.testing.assert_close(fresh[0].weight, net[0].weight)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)  # grey images: repeated to 3 channels, resized to 16
    maps = features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 16, 16), (2, 8, 8, 8)]
    maps[1].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in fresh.parameters())
    with pytest.raises(FileNotFoundError, match="local file"):
        FrozenFeatureNetwork(fresh, layers=["0"], weights=str(tmp_path / "missing.safetensors"))

    teacher = tiny_unet_teacher()
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = GDD(feature_network=features)
    method.attach(teacher, student)
    assert not any(k.startswith("external") for k in method.state_dict())  # never checkpointed
    assert [id(p) for p in method.trainable_parameters("discriminator", student)] == [
        id(p) for p in method.heads.parameters()
    ]


@pytest.mark.parametrize("kind", ["song", "dhariwal"])
def test_discriminator_features_and_losses_are_finite_on_an_edm_teacher(kind):
    """feature_time 0 reads the teacher at sigma_min, not at sigma = 0 (c_noise = log(0) / 4)."""
    from distill.teachers.edm import edm_teacher
    from tests.teachers.edm_pickles import tiny_edm

    teacher = edm_teacher(tiny_edm(kind)[0], {})
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method = GDD(frozen_layers="gdd", r1_gamma=1e-2)
    method.attach(teacher, student)
    x0 = torch.randn(4, 1, 8, 8).clamp(-1, 1)
    assert all(torch.isfinite(f).all() for f in method.features(x0, teacher))
    for phase in ("student", "discriminator"):
        terms = method.loss(phase, x0, teacher, student, 0)
        assert all(torch.isfinite(v).all() for v in terms.values()), phase
        terms["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_gdd_learns_the_ring_mixture_in_one_step_from_real_data_only():
    (sw_before, _, near_before), (sw_after, covered, near_after) = one_step_ring_quality_before_after(
        GDD(r1_gamma=1e-2)
    )
    assert sw_after < 0.25 * sw_before
    assert covered == 1.0  # every mode kept: no collapse
    assert near_after > near_before + 0.3


def test_a_gdd_i_run_keeps_the_teachers_convolutions_bit_identical(compose_train):
    """End to end (Lightning, gradient clipping, EMA, checkpoint): frozen layers never move."""
    cfg = compose_train("method=gdd_i", "train.max_steps=3", "eval=fast", "eval.teacher=false", "eval.student_nfes=[1]")
    train(cfg)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    teacher_model = load_teacher(Path(cfg.paths.cache) / "teachers" / "digits").model
    teacher, frozen = teacher_model.state_dict(), frozen_parameter_names(teacher_model, "gdd")
    assert cfg.method.objective.frozen_layers == "gdd" and frozen  # GDD's own rule is gdd_i's default
    for prefix in ("student.", "ema.copies.0."):
        assert all(torch.equal(state[prefix + n], teacher[n]) for n in frozen)
        assert any(not torch.equal(state[prefix + n], teacher[n]) for n in teacher if n not in frozen)
