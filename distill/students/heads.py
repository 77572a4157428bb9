"""Students whose output layer is replaced by new heads: a teacher copy, one body call, several outputs.

ArcFlow's momentum components and pi-Flow's policies (docs/methods.md 8, 8.1) both keep the network
body and feed the features that reached its output layer into new heads: the output layer
replicated (so the student starts as the teacher) plus small gate heads. ``HeadedStudent`` finds that
layer, runs the body once with a hook that captures its input, and returns each head's output per
element, through the network's own unpatchify for patch-token transformers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.nets.velocity import VelocityModel

OUTPUT_TYPES = (nn.Conv2d, nn.Linear)


def output_layer(net: nn.Module) -> tuple[str, nn.Module]:
    """The last registered Conv2d / Linear: the layer that writes the network's output."""
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, OUTPUT_TYPES)]
    if not layers:
        raise ValueError(f"{type(net).__name__} has no Conv2d or Linear output layer for new heads")
    return layers[-1]


def replicate_layer(layer: nn.Module, copies: int, bias_noise: float, noise_group: int = 1) -> nn.Module:
    """``layer`` with its output units repeated ``copies`` times (component-major), noisy biases:
    one noise value per ``noise_group`` consecutive units of a copy (4 for the 2x2 patch tokens of
    FLUX / Qwen-Image, whose units are channel-major: one value per (component, latent channel), as
    pnotp/ArcFlow arcqwen.py:252-257)."""
    units = layer.weight.shape[0]
    if noise_group < 1 or units % noise_group:
        raise ConfigError(
            f"method.objective.bias_noise_group={noise_group} must be >= 1 and divide the output layer's {units} units"
        )
    wide = layer_like(layer, units * copies)
    with torch.no_grad():
        wide.weight.copy_(layer.weight.repeat(copies, *[1] * (layer.weight.ndim - 1)))
        bias = layer.bias.repeat(copies) if layer.bias is not None else torch.zeros_like(wide.bias)
        noise = torch.randn(bias.numel() // noise_group, dtype=bias.dtype, device=bias.device)
        wide.bias.copy_(bias + bias_noise * noise.repeat_interleave(noise_group))
    return wide


def layer_like(layer: nn.Module, out_units: int, pointwise: bool = False) -> nn.Module:
    """A layer of ``layer``'s kind and input size with ``out_units`` outputs (1x1 when ``pointwise``)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, out_units)
    if pointwise:
        return nn.Conv2d(layer.in_channels, out_units, 1)
    return nn.Conv2d(layer.in_channels, out_units, layer.kernel_size, layer.stride, layer.padding)


class HeadedStudent(nn.Module):
    """A flow-matching teacher copy whose output layer's input feeds new heads.

    Args:
        model: the teacher copy (a ``VelocityModel`` with scheme ``fm``: its output is a velocity).
        method: the method's name, for the error that refuses another scheme.
    """

    def __init__(self, model: VelocityModel, method: str):
        super().__init__()
        if getattr(model, "scheme", None) != "fm":
            raise ValueError(
                f"{method}'s heads are velocities: the student must be an fm-scheme "
                f"VelocityModel, got {type(model).__name__} scheme={getattr(model, 'scheme', None)}"
            )
        self.model = model
        self.out_name, out = output_layer(model.net)
        # a Linear output writes units (flat MLPs, or the tokens of a transformer); a conv output channels
        self.per_element = isinstance(out, nn.Linear)
        self.units = out.weight.shape[0]

    def head_outputs(self, x: Tensor, s: Tensor, heads: list[tuple[nn.Module, int]]) -> tuple[list[Tensor], bool]:
        """One call of the body; each ``(head, copies)`` reads the input of its output layer.

        Returns each head's output as ``(B, copies, c, *x.shape[2:])`` and whether it came through
        tokens: a conv head's copy has its own channel count c (the output layer's for a replicated
        layer, 1 for a gate); a Linear head's copy is as wide as the output layer, laid out as x.
        Patch-token transformers (DiT, SD3, FLUX.1, Qwen-Image) write tokens that the network (or its
        adapter) unpatchifies after the output layer: there the heads' outputs replace the output
        layer's, each copy stacked along the batch, so the network's own unpatchify (which reads the
        batch as -1 or ``shape[0]``) lays them out per pixel; they are split off afterwards.
        """
        captured: list[Tensor] = []
        dtype = heads[0][0].weight.dtype

        def heads_in_place_of_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            captured.append(args[0])
            if args[0].ndim != 3:
                return None
            return torch.cat([self._token_copies(head(args[0].to(dtype)), n) for head, n in heads])

        layer = dict(self.model.net.named_modules())[self.out_name]
        handle = layer.register_forward_hook(heads_in_place_of_output)
        try:
            out = self.model(x, s)
        finally:
            handle.remove()
        h, b = captured[-1], x.shape[0]
        if h.ndim == 3:
            parts = out.split([n * b for _, n in heads])
            return [
                part.reshape(n, b, *x.shape[1:]).transpose(0, 1) for part, (_, n) in zip(parts, heads, strict=True)
            ], True
        if h.ndim != (2 if self.per_element else 4):
            raise ValueError(
                f"{type(self).__name__}'s heads read the output layer's input as (B, width), (B, C, H, W) or "
                f"(B, tokens, width), got {tuple(h.shape)}"
            )
        if self.per_element:
            return [head(h).view(b, n, *x.shape[1:]) for head, n in heads], False
        return [head(h).view(b, n, -1, *x.shape[2:]) for head, n in heads], False

    def _token_copies(self, out: Tensor, copies: int) -> Tensor:
        """Token head output (B, N, copies units) -> its copies as output tokens, (copies B, N, units)."""
        b, tokens, _ = out.shape
        return out.view(b, tokens, copies, self.units).permute(2, 0, 1, 3).reshape(copies * b, tokens, self.units)
