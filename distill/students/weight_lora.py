"""LoRA on layers that read their own ``weight`` in ``forward``: EDM's ``Linear`` and ``Conv2d`` and
EDM2's ``MPConv`` (``distill.nets.edm_layers``, ``distill.nets.edm2``), which peft cannot wrap.

peft's own LoRA layers add ``B(A(x))`` beside ``nn.Linear`` / ``nn.Conv2d`` and need their kernel,
stride and padding. EDM's convolutions also resample (FIR up/down, fused or not) around the weight,
and EDM2's normalise it, so the adapter is applied where the layer uses it: the base layer runs on
``weight + scaling * (B @ A)`` (reshaped to the weight). Merging adds that same delta, so a merged
network computes exactly what the adapted one did. The layers are registered with peft
(``LoraConfig._register_custom_module``), so injection, freezing, saving and ``merge()`` are peft's.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.lora import Linear as PeftLoraLinear
from torch import Tensor, nn
from torch.func import functional_call

from distill.nets.edm2 import MPConv
from distill.nets.edm_layers import Conv2d as EDMConv2d
from distill.nets.edm_layers import Linear as EDMLinear


class WeightLoraError(ValueError):
    """A target that weight-space LoRA cannot adapt, or a setting it cannot honour."""


class WeightLora(PeftLoraLinear):
    """peft's LoRA over a layer's flattened weight (out, in * k * k), evaluated through the layer itself."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any):
        weight = getattr(base_layer, "weight", None)
        if not isinstance(weight, Tensor):  # EDM's kernel=0 Conv2d only resamples
            raise WeightLoraError(
                f"{type(base_layer).__name__} without a weight (a resampling-only layer) cannot take "
                "LoRA: leave it out of student.lora.targets"
            )
        if config.lora_dropout:
            raise WeightLoraError(
                f"student.lora.dropout={config.lora_dropout}: LoRA on EDM layers adapts the weight, "
                "so there is no adapter input to drop out; set it to 0"
            )
        super().__init__(base_layer, adapter_name, config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.weight[0].numel(), module.weight.shape[0]

    @property
    def lora_variants(self) -> dict:
        return {(): None}  # plain LoRA only (no DoRA and friends)

    def get_delta_weight(self, adapter: str) -> Tensor:
        return super().get_delta_weight(adapter).reshape(self.get_base_layer().weight.shape)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        base = self.get_base_layer()
        if self.disable_adapters and self.merged:
            self.unmerge()
        adapters = [a for a in self.active_adapters if a in self.lora_A]
        if self.disable_adapters or self.merged or not adapters:
            return base(x, *args, **kwargs)
        weight = base.weight + sum(self.get_delta_weight(a).to(base.weight.dtype) for a in adapters)
        return functional_call(base, {"weight": weight}, (x, *args), kwargs)

    def __repr__(self) -> str:
        return "weight_" + super().__repr__()


# layer class -> its LoRA class, for LoraConfig._register_custom_module
WEIGHT_LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    EDMLinear: WeightLora,
    EDMConv2d: WeightLora,
    MPConv: WeightLora,
}
