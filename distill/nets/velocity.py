"""A raw network plus its parameterization: the model that teachers and students share.

``VelocityModel`` turns ``net(x, c_noise)`` into the canonical contract of the whole framework:
``model(x_s, s) -> v`` in flow-matching coordinates (``x_s = (1 - s) x0 + s eps``, ``v = eps - x0``).
Two schemes are built in, one per pretraining loss:

- ``fm``: the net predicts the velocity directly, ``c_noise = 1000 s`` (the diffusers convention).
- ``edm``: EDM preconditioning in VE coordinates, the net's output becomes the denoised x0
  (Karras et al. 2022, section 1.3 of docs/methods.md), ``c_noise = 1000 * ln(sigma) / 4``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from distill.core.adapt import to_velocity_model
from distill.core.losses import edm_precond
from distill.core.process import EDM, FlowMatching, NoiseProcess
from distill.core.tensors import append_dims

SCHEMES = ("fm", "edm")


def edm_denoise(net: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's denoiser ``c_skip x + c_out net(c_in x, 1000 ln(sigma) / 4)`` (docs/methods.md 1.3), the
    scalings in float64. x: (B, ...); sigma: (B,); returns x's shape and dtype."""
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    x64 = x.double()
    out = net((append_dims(c_in, x.ndim) * x64).to(x.dtype), (1000 * c_noise).to(x.dtype))
    return (append_dims(c_skip, x.ndim) * x64 + append_dims(c_out, x.ndim) * out.double()).to(x.dtype)


class VelocityModel(nn.Module):
    """``net`` made into a velocity model ``(x_s, s) -> v`` under ``scheme``.

    Args:
        net: any module with ``net(x, c_noise)`` returning x's shape.
        scheme: ``"fm"`` or ``"edm"``.
        sigma_data: EDM's data standard deviation (``edm`` only).
    """

    def __init__(self, net: nn.Module, scheme: str = "fm", sigma_data: float = 0.5):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme={scheme!r} is unknown; choose one of {SCHEMES}")
        self.net = net
        self.scheme = scheme
        self.sigma_data = sigma_data
        self.process: NoiseProcess = FlowMatching() if scheme == "fm" else EDM(sigma_data=sigma_data)
        self.prediction = "flow" if scheme == "fm" else "x0"

    def native(self, x: Tensor, t: Tensor) -> Tensor:
        """The prediction in the scheme's own process: FM velocity, or EDM's denoised x0."""
        if self.scheme == "fm":
            return self.net(x, 1000 * t)
        return edm_denoise(self.net, x, t, self.sigma_data)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        if self.scheme == "fm":
            return self.native(x, s)  # already canonical: skip the conversion
        # Built per call: a stored closure would hold *this* object's native, and a deep copy
        # (every student, EMA and target net) would keep calling the original's weights.
        return to_velocity_model(self.native, self.process, self.prediction)(x, s)
