"""Average-velocity students (MeanFlow, Geng et al. 2025; docs/methods.md 10.3).

``u(z_t, r, t) = 1/(t - r) int_r^t v(z_tau, tau) dtau`` in FM coordinates (t = s, noise at 1).
One network with a second time input gives it: ``net(z, k t, k (t - r))`` for an fm-scheme net,
with k = 1000 (diffusers' convention, what a teacher copy was trained with) or k = 1 (raw times,
py-meanflow's from-scratch UNet: a JVP in t then sees no high-frequency time features). An
edm-scheme net keeps its EDM preconditioning at time t and takes ``k (t - r)`` as its second
input (FastGen's MeanFlow on EDM networks likewise preconditions at t and feeds r as an extra
label): its x0 estimate is read as the velocity at t. At r = t it is the instantaneous velocity,
so a teacher copy whose new time input starts at zero *is* the teacher, and every jump
``t -> r`` is a single call.
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.core.adapt import to_velocity_model
from distill.core.errors import ConfigError
from distill.core.process import EDM
from distill.core.tensors import append_dims
from distill.nets.factory import rebuild_with_extra_time
from distill.nets.velocity import SCHEMES, VelocityModel, edm_denoise

TIME_SCALE = 1000.0  # the diffusers convention every fm-scheme net was trained with


class AverageVelocityModel(nn.Module):
    """``u(z, r, t)``: average velocity of the flow from time t back to r (both (B,), t >= r).

    Args:
        net: a network built with ``extra_time=True``: ``net(x, c_noise, c_extra)``.
        time_scale: k of the time inputs ``(k t, k (t - r))`` (fm) or ``k (t - r)`` (edm).
        scheme: ``fm`` (the net predicts the velocity) or ``edm`` (EDM-preconditioned x0
            prediction at time t, ``c_noise = 1000 ln(sigma) / 4`` as in ``VelocityModel``).
        sigma_data: EDM's data standard deviation (``edm`` only).
    """

    def __init__(self, net: nn.Module, time_scale: float = TIME_SCALE, scheme: str = "fm", sigma_data: float = 0.5):
        super().__init__()
        if not getattr(net, "extra_time", False):
            raise ValueError(f"{type(net).__name__} has no second time input: build it with extra_time=True")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme={scheme!r} is unknown; choose one of {SCHEMES}")
        if time_scale <= 0:
            raise ConfigError(
                f"method.objective.time_scale={time_scale} must be > 0 (1: raw times, 1000: diffusers' convention)"
            )
        self.net, self.time_scale, self.scheme, self.sigma_data = net, float(time_scale), scheme, sigma_data
        self.process = EDM(sigma_data=sigma_data) if scheme == "edm" else None

    def forward(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        c_extra = self.time_scale * (t - r)
        if self.scheme == "fm":
            return self.net(z, self.time_scale * t, c_extra)

        def denoiser(x: Tensor, sigma: Tensor) -> Tensor:  # the net takes k (t - r) as its second input
            return edm_denoise(
                lambda x_in, c_noise: self.net(x_in, c_noise, c_extra.to(x.dtype)), x, sigma, self.sigma_data
            )

        # The velocity at t of the x0 estimate: (z - x0) / t, with t clamped to EDM's [sigma_min, sigma_max].
        return to_velocity_model(denoiser, self.process, "x0")(z, t)

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


class InstantaneousVelocity(nn.Module):
    """``v(z, s) = u(z, s, s)`` of an average-velocity model, as a canonical velocity model ``model(x, s)``
    (a fake-score net copied from such a student)."""

    def __init__(self, model: AverageVelocityModel):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, s: Tensor) -> Tensor:
        return self.model.velocity(z, s)


def average_velocity_from(student: nn.Module, time_scale: float = TIME_SCALE) -> AverageVelocityModel:
    """Turn a velocity-model student (a teacher copy or a random init) into ``u(z, r, t)``.

    The net is rebuilt with ``extra_time=True`` and the student's weights loaded into it; only the
    new (zero-initialised) time input may be missing, so the result equals the student at r = t.
    An ``AverageVelocityModel`` is returned as is (a student rebuilt for a checkpoint reload).
    Both schemes convert (``fm``: ``net(z, k t, k (t - r))``; ``edm``: preconditioned at t).

    Args:
        time_scale: k of the time inputs. A teacher copy in the fm scheme was trained with 1000;
            any other k changes what its time input means (use it with a fresh student).

    Raises:
        ValueError: the student is not a ``VelocityModel``, or the weights do not fit.
    """
    if isinstance(student, AverageVelocityModel):
        return student
    if not isinstance(student, VelocityModel):
        raise ValueError(f"an average-velocity student is made from a VelocityModel, not a {type(student).__name__}")
    kwargs = {"time_scale": time_scale, "scheme": student.scheme, "sigma_data": student.sigma_data}
    if getattr(student.net, "extra_time", False):
        return AverageVelocityModel(student.net, **kwargs)
    try:
        net = rebuild_with_extra_time(student.net).to(next(student.net.parameters()))
    except ValueError as err:  # a class-conditional UNet has no second embedding slot for the time input
        raise ConfigError(f"{err}; an MLP student takes both (student=mlp +student.net.num_classes=<n>)") from err
    result = net.load_state_dict(student.net.state_dict(), strict=False)
    new_keys = set(net.state_dict()) - set(student.net.state_dict())
    if result.unexpected_keys or set(result.missing_keys) - new_keys:
        raise ValueError(
            "the student's weights do not fit its rebuilt net: missing "
            f"{sorted(set(result.missing_keys) - new_keys)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    return AverageVelocityModel(net.train(student.training).requires_grad_(True), **kwargs)
