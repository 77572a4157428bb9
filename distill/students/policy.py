"""pi-Flow students: a teacher copy whose output layer becomes a policy (docs/methods.md 8.1).

The body is untouched; the features that fed its output layer feed new heads (``HeadedStudent``):

- ``GMFlowStudent``: K velocity components (the output layer replicated K times, plus a little bias
  noise to break the symmetry), mixture logits per pixel (zero, so weights start uniform) and one
  log-std per sample from the step's time (a small MLP whose last layer starts at zero weights and
  bias ln 0.05), as GMDiT's ``proj_out_means`` / ``proj_out_logweights`` / ``proj_out_logstds``
  (Lakonik/piFlow gmflow/gmdit_v2.py).
- ``DXStudent``: N velocities on a time grid (the output layer replicated N times, no noise), as
  DX-FLUX's widened ``proj_out`` (Lakonik/piFlow dxflow/dxflux.py).

Both start as "the teacher's velocity" at the step's source.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.nets.velocity import VelocityModel
from distill.students.heads import HeadedStudent, layer_like, replicate_layer

INITIAL_LOGSTD = math.log(0.05)  # gmdit_v2.py init_weights: "reduce the initial logstd"


def time_features(s: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``1000 s`` (the diffusers timestep embedding): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=s.device, dtype=s.dtype) / half)
    angles = 1000 * s[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class LogStdHead(nn.Module):
    """One log-std per sample from the step's time: features, SiLU, Linear, SiLU, Linear -> 1."""

    def __init__(self, features: int = 64, width: int = 256):
        super().__init__()
        self.features = features
        self.layers = nn.Sequential(nn.SiLU(), nn.Linear(features, width), nn.SiLU(), nn.Linear(width, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.constant_(self.layers[-1].bias, INITIAL_LOGSTD)

    def forward(self, s: Tensor) -> Tensor:
        dtype = self.layers[-1].weight.dtype
        return self.layers(time_features(s.to(dtype), self.features)).view(-1)


class GMFlowStudent(HeadedStudent):
    """``gm_output(x, s) -> (means_u, logweights, logstds)`` from one call of a flow-matching model.

    Args:
        model: the teacher copy (a ``VelocityModel`` with scheme ``fm``).
        components: K Gaussians.
        bias_noise: std of the noise added to the replicated output biases (0.05, gmdit_v2.py).
        bias_noise_group: consecutive output units that share one noise value (4: a 2x2 patch token).
        logstd_width: hidden width of the log-std MLP.
    """

    def __init__(
        self,
        model: VelocityModel,
        components: int = 32,
        bias_noise: float = 0.05,
        bias_noise_group: int = 1,
        logstd_width: int = 256,
    ):
        super().__init__(model, "pi-Flow")
        if components < 1:
            raise ConfigError(f"method.objective.components={components} must be >= 1")
        self.components = components
        out = dict(model.net.named_modules())[self.out_name]
        gates = self.units if self.per_element else 1  # Linear outputs: averaged over the units below
        self.means = replicate_layer(out, components, bias_noise, bias_noise_group)
        self.logits = layer_like(out, gates * components, pointwise=True)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        self.logstds = LogStdHead(width=logstd_width)

    def gm_output(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Velocity means (B, K, *x.shape[1:]); log-weights normalised over K, one per pixel (or per
        flat vector), (B, K, 1, ...); log-stds (B,)."""
        k = self.components
        (means, logits), _ = self.head_outputs(x, s, [(self.means, k), (self.logits, k)])
        logweights = torch.log_softmax(logits.mean(2, keepdim=True), dim=1)
        return means, logweights, self.logstds(s)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """The policy's velocity at the step's source: the mixture's mean velocity."""
        means, logweights, _ = self.gm_output(x, s)
        return (logweights.exp() * means).sum(dim=1)


class DXStudent(HeadedStudent):
    """``grid_output(x, s) -> (B, N, *x.shape[1:])`` velocities on the step's time grid.

    Args:
        model: the teacher copy (a ``VelocityModel`` with scheme ``fm``).
        grid_points: N.
        mode: ``grid`` (the source is point N - 1) or ``polynomial`` (the source is coefficient 0).
    """

    def __init__(self, model: VelocityModel, grid_points: int = 10, mode: str = "grid"):
        super().__init__(model, "pi-Flow")
        if grid_points < 1:
            raise ConfigError(f"method.objective.grid_points={grid_points} must be >= 1")
        self.grid_points, self.mode = grid_points, mode
        out = dict(model.net.named_modules())[self.out_name]
        self.grid = replicate_layer(out, grid_points, bias_noise=0.0)

    def grid_output(self, x: Tensor, s: Tensor) -> Tensor:
        (grid,), _ = self.head_outputs(x, s, [(self.grid, self.grid_points)])
        return grid

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """The policy's velocity at the step's source."""
        grid = self.grid_output(x, s)
        return grid[:, -1] if self.mode == "grid" else grid[:, 0]
