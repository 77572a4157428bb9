"""``teacher.train_dropout`` for checkpoint teachers: the rate of the copies trained from the teacher."""

import pytest
import torch

from distill.errors import ConfigError
from distill.nets.dropout import set_residual_dropout
from distill.nets.mlp import TimeMLP
from distill.nets.unet import UNet
from distill.nets.velocity import VelocityModel
from distill.students.flow_map import fresh_student_like, student_from_teacher


def tiny_unet_teacher() -> VelocityModel:
    torch.manual_seed(0)
    net = UNet(8, channels=1, block_out_channels=(8, 16), attention=True, norm_num_groups=4)
    return VelocityModel(net, "fm").eval()


def test_residual_blocks_drop_out_in_the_trained_copies_only():
    teacher = tiny_unet_teacher()
    assert set_residual_dropout(teacher, 0.2) == 8  # one per ResnetBlock2D; attention keeps its 0
    rates = {name: m.p for name, m in teacher.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {p for n, p in rates.items() if n.endswith(".dropout")} == {0.2}
    assert {p for n, p in rates.items() if not n.endswith(".dropout")} == {0.0}
    x, s = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, s), teacher(x, s))  # eval mode: no dropout
        for student in (student_from_teacher(teacher), fresh_student_like(teacher)):
            assert not torch.allclose(student(x, s), student(x, s))  # train mode: masks differ per call


def test_a_rate_for_a_network_without_residual_dropout_names_the_key():
    with pytest.raises(ConfigError, match="teacher.train_dropout=0.2"):
        set_residual_dropout(VelocityModel(TimeMLP((2,), width=8, depth=1)), 0.2)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\)"):
        set_residual_dropout(tiny_unet_teacher(), 1.0)
