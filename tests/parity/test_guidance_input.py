"""Parity: the guidance scale as a student input (methods.md 13) against improved MeanFlow's official
code (Lyy-iiis/imeanflow @ a1cc3a9, ``imf.py`` ``iMeanFlow.sample_cfg_scale``: ``w = exp(u log1p(s_max))``
at ``cfg_beta=1``, ``s_max=7``; ``models/imfDiT.py`` ``_build_sequence``: the network embeds
``1 - 1/w``) and FastGen's classifier-free guidance of the teacher (NVlabs/FastGen
``fastgen/methods/consistency_model/CM.py`` ``ode_solver``: ``v_c + (w - 1)(v_c - v_u)``), restated
here in float64 on the same inputs and draws."""

import math

import torch

from distill.core.conditioning import GUIDANCE, LABELS, conditioned, draw_guidance
from distill.nets.embedding import guidance_feature
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import Teacher


def imf_sample_cfg_scale(u: torch.Tensor, s_max: float = 7.0) -> torch.Tensor:
    """imf.py sample_cfg_scale, cfg_beta == 1.0 branch: ``s = exp(u * log1p(s_max))``."""
    return torch.exp(u * math.log1p(s_max))


def test_guidance_draws_are_imfs_at_its_range():
    torch.manual_seed(3)
    u = torch.rand(4096, dtype=torch.float64)  # the one uniform draw draw_guidance makes
    torch.manual_seed(3)
    ours = draw_guidance(4096, 1.0, 8.0)  # iMF's [1, 1 + s_max]
    torch.testing.assert_close(ours.double(), imf_sample_cfg_scale(u), rtol=1e-6, atol=0)


def test_the_embedded_feature_is_imfs_one_minus_inverse_w_at_the_time_scale():
    w = torch.tensor([1.0, 1.5, 2.0, 4.0, 8.0])
    torch.testing.assert_close(guidance_feature(w), 1000 * (1 - 1 / w))


def test_per_sample_guided_teacher_is_fastgens_cfg_row_by_row():
    torch.manual_seed(0)
    model = VelocityModel(TimeMLP((2,), width=16, depth=2, num_classes=4)).double()
    x, s = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    labels, w = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1.0, 1.7, 2.5, 4.0, 7.5], dtype=torch.float64)
    with conditioned({LABELS: labels}):
        v_c = model(x, s)
    with conditioned({LABELS: torch.full((5,), 4)}):
        v_u = model(x, s)
    fastgen = v_c + (w[:, None] - 1) * (v_c - v_u)  # CM.py ode_solver: flow_pred + (g - 1)(flow_pred - flow_pred_neg)
    with conditioned({LABELS: labels, GUIDANCE: w}):
        ours = Teacher(model, (2,))(x, s)
    torch.testing.assert_close(ours, fastgen, rtol=1e-12, atol=1e-12)
