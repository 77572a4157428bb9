"""ArcFlow students: a teacher copy whose output layer becomes K momentum components (docs/methods.md 8).

The network body is untouched. The features that fed its output layer feed three new heads:
component means (the output layer replicated K times, plus a little bias noise to break the
symmetry), mixture logits (zero, so weights start uniform) and rates of components 2..K (zero
weights, biases ``ln(geomspace(0.2, 4))`` as in the ArcFlow code). So the student starts as "the
teacher's velocity", and each step's field integrates in closed form (``distill.core.momentum``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.momentum import Momentum, velocity_at
from distill.nets.velocity import VelocityModel

OUTPUT_TYPES = (nn.Conv2d, nn.Linear)


def output_layer(net: nn.Module) -> tuple[str, nn.Module]:
    """The last registered Conv2d / Linear: the layer that writes the network's output."""
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, OUTPUT_TYPES)]
    if not layers:
        raise ValueError(f"{type(net).__name__} has no Conv2d or Linear output layer for momentum heads")
    return layers[-1]


def _replicate(layer: nn.Module, copies: int, bias_noise: float, noise_group: int = 1) -> nn.Module:
    """``layer`` with its output units repeated ``copies`` times (component-major), noisy biases:
    one noise value per ``noise_group`` consecutive units of a copy (4 for the 2x2 patch tokens of
    FLUX / Qwen-Image, whose units are channel-major: one value per (component, latent channel), as
    pnotp/ArcFlow arcqwen.py:252-257)."""
    units = layer.weight.shape[0]
    if noise_group < 1 or units % noise_group:
        raise ConfigError(
            f"method.objective.bias_noise_group={noise_group} must be >= 1 and divide the output layer's {units} units"
        )
    wide = _like(layer, units * copies)
    with torch.no_grad():
        wide.weight.copy_(layer.weight.repeat(copies, *[1] * (layer.weight.ndim - 1)))
        bias = layer.bias.repeat(copies) if layer.bias is not None else torch.zeros_like(wide.bias)
        noise = torch.randn(bias.numel() // noise_group, dtype=bias.dtype, device=bias.device)
        wide.bias.copy_(bias + bias_noise * noise.repeat_interleave(noise_group))
    return wide


def _like(layer: nn.Module, out_units: int, pointwise: bool = False) -> nn.Module:
    """A layer of ``layer``'s kind and input size with ``out_units`` outputs (1x1 when ``pointwise``)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, out_units)
    if pointwise:
        return nn.Conv2d(layer.in_channels, out_units, 1)
    return nn.Conv2d(layer.in_channels, out_units, layer.kernel_size, layer.stride, layer.padding)


class MomentumStudent(nn.Module):
    """``mixture(x, s) -> Momentum`` from one call of a flow-matching velocity model.

    Args:
        model: the teacher copy (a ``VelocityModel`` with scheme ``fm``: its output is a velocity).
        components: K.
        bias_noise: std of the noise added to the replicated output biases.
        bias_noise_group: consecutive output units that share one noise value (4: a 2x2 patch token).
        rate_range: the initial rates of components 2..K are log-spaced over this range.
    """

    def __init__(
        self,
        model: VelocityModel,
        components: int = 8,
        bias_noise: float = 0.05,
        rate_range: tuple[float, float] = (0.2, 4.0),
        bias_noise_group: int = 1,
    ):
        super().__init__()
        if getattr(model, "scheme", None) != "fm":
            raise ValueError(
                "ArcFlow's components are velocities: the student must be an fm-scheme "
                f"VelocityModel, got {type(model).__name__} scheme={getattr(model, 'scheme', None)}"
            )
        if components < 1:
            raise ConfigError(f"method.objective.components={components} must be >= 1")
        self.model, self.components = model, components
        self.out_name, out = output_layer(model.net)
        # a Linear output: one gate per output unit (flat MLPs keep them; token outputs average them per pixel)
        self.per_element = isinstance(out, nn.Linear)
        units = self.units = out.weight.shape[0]
        gates = units if self.per_element else 1  # conv outputs: one mixture per pixel, shared by channels
        self.means = _replicate(out, components, bias_noise, bias_noise_group)
        self.logits = _like(out, gates * components, pointwise=True)
        self.rates = _like(out, gates * max(components - 1, 1), pointwise=True)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        nn.init.zeros_(self.rates.weight)
        with torch.no_grad():
            lo, hi = rate_range
            initial = torch.logspace(math.log10(lo), math.log10(hi), max(components - 1, 1)).log()
            self.rates.bias.copy_(initial.repeat_interleave(gates) if self.per_element else initial)

    def mixture(self, x: Tensor, s: Tensor) -> Momentum:
        """One call of the body; the heads read the input of its output layer.

        Patch-token transformers (DiT, SD3, FLUX.1, Qwen-Image) write tokens that the network (or
        its adapter) unpatchifies after the output layer. There the heads' outputs replace the
        output layer's, each component stacked along the batch, so the network's own unpatchify
        (which reads the batch as -1 or ``shape[0]``) lays them out; they are split off afterwards.
        """
        captured: list[Tensor] = []

        def heads_in_place_of_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            captured.append(args[0])
            return self._stacked_heads(args[0].to(self.means.weight.dtype)) if args[0].ndim == 3 else None

        layer = dict(self.model.net.named_modules())[self.out_name]
        handle = layer.register_forward_hook(heads_in_place_of_output)
        try:
            out = self.model(x, s)
        finally:
            handle.remove()
        h = captured[-1]
        if h.ndim == 3:
            return self._token_mixture(out, x)
        if h.ndim != (2 if self.per_element else 4):
            raise ValueError(
                f"momentum heads read the output layer's input as (B, width), (B, C, H, W) or (B, tokens, "
                f"width), got {tuple(h.shape)}"
            )
        b, k = x.shape[0], self.components
        gate_shape = (b, k, *x.shape[1:]) if self.per_element else (b, k, 1, *x.shape[2:])
        means = self.means(h).view(b, k, *x.shape[1:])
        weights = torch.softmax(self.logits(h).view(gate_shape), dim=1)
        rates = self.rates(h).view(b, -1, *gate_shape[2:])[:, : k - 1]
        rates = torch.cat([torch.zeros_like(weights[:, :1]), rates], dim=1)  # component 1: constant velocity
        return Momentum(means, weights, rates)

    def _stacked_heads(self, h: Tensor) -> Tensor:
        """Token features (B, N, width) -> each head's components as output tokens, (n B, N, units) per head."""

        def to_batch(out: Tensor) -> Tensor:
            b, tokens, wide = out.shape
            n = wide // self.units
            return out.view(b, tokens, n, self.units).permute(2, 0, 1, 3).reshape(n * b, tokens, self.units)

        return torch.cat([to_batch(self.means(h)), to_batch(self.logits(h)), to_batch(self.rates(h))])

    def _token_mixture(self, out: Tensor, x: Tensor) -> Momentum:
        """Split the unpatchified head outputs. Logits and rates are averaged over channels: the
        mixture is per pixel, shared by its channels (docs/methods.md 8 keeps logweights per pixel)."""
        b, k = x.shape[0], self.components
        n_rates = self.rates.out_features // self.units
        means, logits, rates = (
            part.reshape(-1, b, *x.shape[1:]).transpose(0, 1) for part in out.split([k * b, k * b, n_rates * b])
        )
        weights = torch.softmax(logits.mean(2, keepdim=True), dim=1)
        rates = rates.mean(2, keepdim=True)[:, : k - 1]
        rates = torch.cat([torch.zeros_like(weights[:, :1]), rates], dim=1)  # component 1: constant velocity
        return Momentum(means, weights, rates)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """The instantaneous velocity at the step's start (the framework's ``model(x, s)`` contract)."""
        return velocity_at(self.mixture(x, s), torch.zeros_like(s))


def momentum_student_from(student: nn.Module, components: int, **kwargs) -> MomentumStudent:
    """Wrap a velocity-model student; an already wrapped one (a checkpoint reload) is kept."""
    if isinstance(student, MomentumStudent):
        return student
    return MomentumStudent(student, components, **kwargs)
