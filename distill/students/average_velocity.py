"""Average-velocity students (MeanFlow, Geng et al. 2025; methods.md 10.3).

``u(z_t, r, t) = 1/(t - r) int_r^t v(z_tau, tau) dtau`` in FM coordinates (t = s, noise at 1).
One network with a second time input gives it: ``net(z, 1000 t, 1000 (t - r))``. At r = t it is
the instantaneous velocity, so a teacher copy whose new time input starts at zero *is* the
teacher, and every jump ``t -> r`` is a single call.
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.core.tensors import append_dims
from distill.nets.denoiser import VelocityModel
from distill.nets.factory import rebuild_with_extra_time

TIME_SCALE = 1000.0  # the diffusers convention every fm-scheme net was trained with


class AverageVelocityModel(nn.Module):
    """``u(z, r, t)``: average velocity of the flow from time t back to r (both (B,), t >= r).

    Args:
        net: a network built with ``extra_time=True``: ``net(x, c_noise, c_extra)``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if not getattr(net, "extra_time", False):
            raise ValueError(f"{type(net).__name__} has no second time input: build it with extra_time=True")
        self.net = net

    def forward(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return self.net(z, TIME_SCALE * t, TIME_SCALE * (t - r))

    def velocity(self, z: Tensor, s: Tensor) -> Tensor:
        """The instantaneous velocity ``v(z, s) = u(z, s, s)`` (the canonical ``model(x, s)`` contract)."""
        return self(z, s, s)


def flow_map(model: AverageVelocityModel, z: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """``Phi(z_t, t -> r) = z_t - (t - r) u(z_t, r, t)``. z: (B, ...); t, r: (B,)."""
    return z - append_dims(t - r, z.ndim) * model(z, r, t)


class AverageVelocityFlowMap(nn.Module):
    """``flow_map`` in the ``(x, s, s_next)`` signature of ``distill.core.samplers.sample_flow_map``."""

    def __init__(self, model: AverageVelocityModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
        return flow_map(self.model, x, s, s_next)


def average_velocity_from(student: nn.Module) -> AverageVelocityModel:
    """Turn a velocity-model student (a teacher copy or a random init) into ``u(z, r, t)``.

    The net is rebuilt with ``extra_time=True`` and the student's weights loaded into it; only the
    new (zero-initialised) time input may be missing, so the result equals the student at r = t.
    An ``AverageVelocityModel`` is returned as is (a student rebuilt for a checkpoint reload).

    Raises:
        ValueError: the student is not an fm-scheme ``VelocityModel``, or the weights do not fit.
    """
    if isinstance(student, AverageVelocityModel):
        return student
    if not isinstance(student, VelocityModel):
        raise ValueError(f"an average-velocity student is made from a VelocityModel, not a {type(student).__name__}")
    if student.scheme != "fm":
        raise ValueError(
            f"an average-velocity student needs an fm-scheme velocity net (net(x, 1000 s) -> v), but this one is "
            f"{student.scheme!r}: pretrain the teacher with scheme=fm, or use a random-init student "
            "(student=mlp, student.scheme=fm)"
        )
    if getattr(student.net, "extra_time", False):
        return AverageVelocityModel(student.net)
    net = rebuild_with_extra_time(student.net).to(next(student.net.parameters()))
    result = net.load_state_dict(student.net.state_dict(), strict=False)
    new_keys = set(net.state_dict()) - set(student.net.state_dict())
    if result.unexpected_keys or set(result.missing_keys) - new_keys:
        raise ValueError(
            f"the student's weights do not fit its rebuilt net: missing {sorted(set(result.missing_keys) - new_keys)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    return AverageVelocityModel(net.train(student.training).requires_grad_(True))
