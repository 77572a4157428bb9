"""pi-Flow's students: GMFlow and DX heads start as the teacher on MLPs, UNets and patch-token transformers."""

import pytest
import torch

from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.students.policy import DXStudent, GMFlowStudent
from tests.methods.learning import tiny_unet_teacher
from tests.students.test_momentum_student import tiny_text_transformer


def model_and_shape(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        return VelocityModel(TimeMLP((2,), width=32, depth=2)), (2,)
    if kind == "unet":
        return tiny_unet_teacher().model, (1, 8, 8)
    return tiny_text_transformer(kind), (2, 8, 8)


@pytest.mark.parametrize("kind", ["mlp", "unet", "flux", "qwen", "sd3"])
def test_gmflow_heads_start_as_the_teacher_with_one_gate_per_pixel(kind):
    model, shape = model_and_shape(kind)
    student = GMFlowStudent(model, components=3, bias_noise=0.0).double()
    x, s = torch.randn(2, *shape, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    means, logweights, logstds = student.gm_output(x, s)
    gates = (2, 3, 1) if kind == "mlp" else (2, 3, 1, *shape[1:])  # a flat vector is gated as a whole
    assert means.shape == (2, 3, *shape) and logweights.shape == gates and logstds.shape == (2,)
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), model.double()(x, s), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(means[:, 1], model(x, s), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["unet", "flux"])
def test_dx_heads_are_the_output_layer_replicated(kind):
    model, shape = model_and_shape(kind)
    student = DXStudent(model, grid_points=4).double()
    x, s = torch.randn(2, *shape, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    with torch.no_grad():
        grid = student.grid_output(x, s)
        assert grid.shape == (2, 4, *shape)
        for k in range(4):
            torch.testing.assert_close(grid[:, k], model.double()(x, s), rtol=1e-6, atol=1e-6)
