"""ArcFlow's student: momentum heads on a teacher copy start as the teacher and integrate exactly."""

import pytest
import torch
from torch import nn

from distill.core.conditioning import POOLED, PROMPT_MASK, PROMPTS
from distill.core.momentum import advance, velocity_at
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.momentum import MomentumStudent, momentum_student_from
from distill.teachers.transformers import TextTransformerVelocity
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
    torch.testing.assert_close(
        m.rates[0, 1:].flatten(1)[:, 0],
        torch.logspace(torch.log10(torch.tensor(0.2)), torch.log10(torch.tensor(4.0)), 3).log(),
    )


def test_symmetry_is_broken_and_reloads_are_kept():
    torch.manual_seed(0)
    student = MomentumStudent(VelocityModel(TimeMLP((2,), width=32, depth=2)), components=3)
    m = student.mixture(torch.randn(2, 2), torch.rand(2))
    assert not torch.allclose(m.means[:, 0], m.means[:, 1])
    assert momentum_student_from(student, 3) is student


def test_step_of_the_student_matches_integrating_its_velocity():
    torch.manual_seed(0)
    student = MomentumStudent(VelocityModel(TimeMLP((2,), width=32, depth=2)), components=4).double()
    assert_step_matches_integration(student, torch.randn(4, 2, dtype=torch.float64))


def assert_step_matches_integration(student: MomentumStudent, x: torch.Tensor, length: float = 0.6) -> None:
    """The closed-form step from s = 0.9 equals the midpoint rule on the step's velocity profile."""
    s_src = torch.full((x.shape[0],), 0.9, dtype=torch.float64)
    with torch.no_grad():
        m = student.mixture(x, s_src)
        closed = advance(x, m, s_src, s_src, s_src - length)
        y, n = x.clone(), 2000
        for i in range(n):
            y = y - length / n * velocity_at(m, torch.full_like(s_src, length * (i + 0.5) / n))
    torch.testing.assert_close(closed, y, rtol=1e-6, atol=1e-6)


def test_edm_students_are_refused():
    with pytest.raises(ValueError, match="fm-scheme"):
        MomentumStudent(VelocityModel(TimeMLP((2,), width=16, depth=1), "edm"))


def tiny_text_transformer(family: str) -> nn.Module:
    """A tiny FLUX.1 / Qwen-Image / SD3 transformer behind the text adapter, the empty prompt random."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family == "flux":
        net = FluxTransformer2DModel(
            in_channels=8,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=8,
            pooled_projection_dim=8,
            axes_dims_rope=(2, 2, 4),
        )
        null = {PROMPTS: torch.randn(1, 3, 8), POOLED: torch.randn(1, 8)}
    elif family == "qwen":
        net = QwenImageTransformer2DModel(
            in_channels=8,
            out_channels=2,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=8,
            axes_dims_rope=(2, 2, 4),
        )
        null = {PROMPTS: torch.randn(1, 3, 8), PROMPT_MASK: torch.tensor([[1.0, 1.0, 0.0]])}
    else:
        net = SD3Transformer2DModel(
            sample_size=8,
            in_channels=2,
            out_channels=2,
            num_layers=1,
            attention_head_dim=4,
            num_attention_heads=2,
            joint_attention_dim=8,
            caption_projection_dim=8,
            pooled_projection_dim=8,
            pos_embed_max_size=8,
        )
        null = {PROMPTS: torch.randn(1, 3, 8), POOLED: torch.randn(1, 8)}
    return TextTransformerVelocity(net, null, data_shape=(2, 8, 8))


@pytest.mark.parametrize("family", ["flux", "qwen", "sd3"])
def test_patch_token_transformers_get_per_pixel_heads_that_start_as_the_teacher(family):
    model = tiny_text_transformer(family)
    student = MomentumStudent(model, components=4, bias_noise=0.0)
    x, s = torch.randn(3, 2, 8, 8), torch.rand(3)
    m = student.mixture(x, s)
    assert m.means.shape == (3, 4, 2, 8, 8) and m.weights.shape == m.rates.shape == (3, 4, 1, 8, 8)
    assert (m.rates[:, 0] == 0).all() and (m.rates[:, 1:] != 0).all()
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), model(x, s), rtol=1e-5, atol=1e-5)
    # the components' means are the teacher's output, unpacked exactly as the adapter unpacks it
    with torch.no_grad():
        torch.testing.assert_close(m.means[:, 2], model(x, s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["flux", "qwen"])
def test_step_on_a_transformer_matches_integrating_its_velocity(family):
    student = MomentumStudent(tiny_text_transformer(family), components=4).double()
    with torch.no_grad():  # random heads, so the step is a real arc
        for head in (student.logits, student.rates):
            head.weight.normal_(0, 0.3)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert student.mixture(x, torch.full((2,), 0.9, dtype=torch.float64)).weights.std() > 0.01
    assert_step_matches_integration(student, x)


def test_flux_gates_are_the_logit_heads_tokens_unpacked_per_pixel():
    from distill.teachers.transformers import unpack

    student = MomentumStudent(tiny_text_transformer("flux"), components=3)
    with torch.no_grad():
        student.logits.weight.normal_(0, 0.3)
    x, s = torch.randn(2, 2, 8, 8), torch.full((2,), 0.5)
    h = []
    handle = student.model.net.proj_out.register_forward_pre_hook(lambda module, args: h.append(args[0]))
    with torch.no_grad():
        m = student.mixture(x, s)
    handle.remove()
    tokens = student.logits(h[0]).detach().view(2, 16, 3, 8)  # (B, tokens, K, 2x2 patch x 2 channels)
    logits = torch.stack([unpack(tokens[:, :, k], 2, 8, 8).mean(1, keepdim=True) for k in range(3)], dim=1)
    torch.testing.assert_close(m.weights, torch.softmax(logits, dim=1))


def test_bias_noise_is_shared_by_each_group_of_units():
    # pnotp/ArcFlow arcqwen.py:252-257: one noise value per (component, latent channel), shared by
    # the 2x2 patch positions of a token (4 consecutive, channel-major units)
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((8,), width=16, depth=1))
    student = MomentumStudent(model, components=3, bias_noise=0.05, bias_noise_group=4)
    layer = dict(model.net.named_modules())[student.out_name]
    noise = (student.means.bias - layer.bias.repeat(3)).detach().view(3 * 8 // 4, 4)
    torch.testing.assert_close(noise, noise[:, :1].expand(-1, 4))
    assert noise[:, 0].unique().numel() == 6 and noise.abs().max() > 0
    with pytest.raises(ValueError, match="method.objective.bias_noise_group"):
        MomentumStudent(VelocityModel(TimeMLP((8,), width=16, depth=1)), components=3, bias_noise_group=3)
