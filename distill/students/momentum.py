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
from distill.students.heads import HeadedStudent, layer_like, replicate_layer


class MomentumStudent(HeadedStudent):
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
        super().__init__(model, "ArcFlow")
        if components < 1:
            raise ConfigError(f"method.objective.components={components} must be >= 1")
        self.components = components
        out = dict(model.net.named_modules())[self.out_name]
        # a Linear output: one gate per output unit (flat MLPs keep them; token outputs average them per pixel)
        gates = self.units if self.per_element else 1  # conv outputs: one mixture per pixel, shared by channels
        self.means = replicate_layer(out, components, bias_noise, bias_noise_group)
        self.logits = layer_like(out, gates * components, pointwise=True)
        self.rates = layer_like(out, gates * max(components - 1, 1), pointwise=True)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        nn.init.zeros_(self.rates.weight)
        with torch.no_grad():
            lo, hi = rate_range
            initial = torch.logspace(math.log10(lo), math.log10(hi), max(components - 1, 1)).log()
            self.rates.bias.copy_(initial.repeat_interleave(gates) if self.per_element else initial)

    def mixture(self, x: Tensor, s: Tensor) -> Momentum:
        """One call of the body: the step's momentum components (``HeadedStudent.head_outputs``).
        Through tokens, logits and rates are averaged over channels: the mixture is per pixel,
        shared by its channels (docs/methods.md 8 keeps logweights per pixel)."""
        k = self.components
        heads = [(self.means, k), (self.logits, k), (self.rates, max(k - 1, 1))]
        (means, logits, rates), tokens = self.head_outputs(x, s, heads)
        if tokens:
            logits, rates = logits.mean(2, keepdim=True), rates.mean(2, keepdim=True)
        weights = torch.softmax(logits, dim=1)
        rates = torch.cat(
            [torch.zeros_like(weights[:, :1]), rates[:, : k - 1]], dim=1
        )  # component 1: constant velocity
        return Momentum(means, weights, rates)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """The instantaneous velocity at the step's start (the framework's ``model(x, s)`` contract)."""
        return velocity_at(self.mixture(x, s), torch.zeros_like(s))


def momentum_student_from(student: nn.Module, components: int, **kwargs) -> MomentumStudent:
    """Wrap a velocity-model student; an already wrapped one (a checkpoint reload) is kept."""
    if isinstance(student, MomentumStudent):
        return student
    return MomentumStudent(student, components, **kwargs)
