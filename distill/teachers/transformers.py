"""Text-to-image transformers (SD3, FLUX.1, Qwen-Image) behind ``model(x_s, s) -> eps - x0``.

Each family takes its latents, time and prompt in its own way; what its diffusers 0.42 pipeline
feeds the transformer is rebuilt here, so a student sees plain (B, C, H, W) latents at FM time s:

| family | latents in / out | timestep | prompt inputs |
|---|---|---|---|
| SD3Transformer2DModel | (B, C, H, W), patchified inside | 1000 s | encoder_hidden_states, pooled_projections |
| FluxTransformer2DModel | 2x2-packed tokens (B, HW/4, 4C) | s (x1000) | + img_ids, txt_ids, guidance (FLUX.1-dev) |
| QwenImageTransformer2DModel | 2x2-packed tokens (B, HW/4, 4C) | s (x1000) | encoder_hidden_states(_mask), img_shapes |

All three predict the flow-matching velocity ``eps - x0`` at sigma = s (their schedulers step
``x + (sigma_next - sigma) v``), which is already the framework's convention. FLUX.1-dev is
guidance-distilled: its guidance scale is an input (``embedded_guidance``), not two calls.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from distill.core.conditioning import POOLED, PROMPT_MASK, PROMPTS, Condition, condition_for

# transformer class -> (its pipeline, the condition keys its prompts produce)
TEXT_TRANSFORMERS = {
    "SD3Transformer2DModel": ("StableDiffusion3Pipeline", (PROMPTS, POOLED)),
    "FluxTransformer2DModel": ("FluxPipeline", (PROMPTS, POOLED)),
    "QwenImageTransformer2DModel": ("QwenImagePipeline", (PROMPTS, PROMPT_MASK)),
}
PACKED = ("FluxTransformer2DModel", "QwenImageTransformer2DModel")  # latents go in as 2x2 tokens
TEXT_ONLY_INPUTS = ("pooled_projections", "img_ids", "txt_ids", "img_shapes", "encoder_hidden_states_mask")
SD3_TIME_SCALE = 1000.0
FLUX_DEV_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale


def is_text_transformer(class_name: str) -> bool:
    return class_name in TEXT_TRANSFORMERS


def needs_text_adapter(net: nn.Module) -> bool:
    """A text-to-image transformer of a family without an adapter here: its forward takes inputs (pooled
    prompts, position ids, image shapes, text masks) that no generic call provides."""
    params = inspect.signature(net.forward).parameters
    return not is_text_transformer(type(net).__name__) and any(name in params for name in TEXT_ONLY_INPUTS)


def latent_channels(net: nn.Module) -> int:
    """Channels of the unpacked latents: packed families take 4 per token (a 2x2 patch)."""
    channels = int(net.config.in_channels)
    return channels // 4 if type(net).__name__ in PACKED else channels


def pack(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, HW/4, 4C): FluxPipeline / QwenImagePipeline ``_pack_latents``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * (w // 2), c * 4)


def unpack(tokens: Tensor, c: int, h: int, w: int) -> Tensor:
    """Inverse of ``pack``; the batch is read as -1 so stacked head outputs (ArcFlow) unpack too."""
    return tokens.reshape(-1, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """FLUX's rotary position ids of the (h/2, w/2) token grid: (HW/4, 3) rows (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def sd3_inputs(x: Tensor, s: Tensor, condition: Condition) -> dict:
    return {
        "hidden_states": x,
        "timestep": SD3_TIME_SCALE * s,
        "encoder_hidden_states": condition[PROMPTS],
        "pooled_projections": condition[POOLED],
    }


def flux_inputs(x: Tensor, s: Tensor, condition: Condition, guidance: float | None) -> dict:
    prompts = condition[PROMPTS]
    inputs = {
        "hidden_states": pack(x),
        "timestep": s,
        "encoder_hidden_states": prompts,
        "pooled_projections": condition[POOLED],
        "img_ids": image_ids(*x.shape[2:], x.device, x.dtype),
        "txt_ids": prompts.new_zeros(prompts.shape[1], 3),
    }
    if guidance is not None:  # FLUX.1-dev: the pipeline passes guidance_scale, the model multiplies by 1000
        inputs["guidance"] = torch.full((x.shape[0],), guidance, device=x.device, dtype=x.dtype)
    return inputs


def qwen_inputs(x: Tensor, s: Tensor, condition: Condition, guidance: float | None) -> dict:
    b, _, h, w = x.shape
    inputs = {
        "hidden_states": pack(x),
        "timestep": s,
        "encoder_hidden_states": condition[PROMPTS],
        "encoder_hidden_states_mask": condition.get(PROMPT_MASK),
        "img_shapes": [[(1, h // 2, w // 2)]] * b,
    }
    if guidance is not None:
        inputs["guidance"] = torch.full((b,), guidance, device=x.device, dtype=x.dtype)
    return inputs


class TextTransformerVelocity(nn.Module):
    """An SD3 / FLUX.1 / Qwen-Image transformer as ``model(x_s, s) -> v`` on (B, C, H, W) latents.

    Args:
        net: the diffusers transformer (kept as ``net``: LoRA targets and features read its names).
        null_condition: the empty prompt's inputs (batch 1), used when no condition is open and
            as classifier-free guidance's unconditional side.
        embedded_guidance: FLUX.1-dev's guidance input (None for models without guidance embeds).
        data_shape: (C, H, W) of the latents it is used at (these transformers take any size).
    """

    scheme = "fm"  # the output is a flow-matching velocity already
    text = True
    num_classes = 0

    def __init__(
        self,
        net: nn.Module,
        null_condition: Condition,
        embedded_guidance: float | None = None,
        data_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.net, self.family = net, type(net).__name__
        if not is_text_transformer(self.family):
            raise ValueError(
                f"{self.family} is not a supported text-to-image transformer; supported: {sorted(TEXT_TRANSFORMERS)}"
            )
        self.keys = tuple(null_condition)
        for key, value in null_condition.items():  # buffers follow the module's device; never checkpointed
            self.register_buffer(f"null_{key}", value, persistent=False)
        self.embedded_guidance, self.data_shape = embedded_guidance, data_shape

    @property
    def null_condition(self) -> Condition:
        return {key: getattr(self, f"null_{key}") for key in self.keys}

    def inputs(self, x: Tensor, s: Tensor) -> dict:
        """The transformer's keyword arguments for ``x`` at FM time ``s``, as its pipeline builds them."""
        condition = condition_for(x)
        if condition is None:  # no prompt: the empty one
            condition = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in self.null_condition.items()}
        s = s.to(x.dtype)
        if self.family == "SD3Transformer2DModel":
            return sd3_inputs(x, s, condition)
        if self.family == "FluxTransformer2DModel":
            return flux_inputs(x, s, condition, self.embedded_guidance)
        return qwen_inputs(x, s, condition, self.embedded_guidance)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        dtype = self.net.dtype  # a bfloat16 teacher computes in bfloat16 inside or outside autocast
        inputs = {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in self.inputs(x.to(dtype), s).items()
        }
        out = self.net(**inputs).sample
        if self.family in PACKED:
            out = unpack(out, x.shape[1], *x.shape[2:])
        return out.to(x.dtype)


def embedded_guidance_for(net: nn.Module, requested: float | None) -> float | None:
    """The guidance input of a guidance-distilled model (FLUX.1-dev): ``requested``, else FluxPipeline's
    default 3.5; an error for a model trained without guidance embeddings."""
    embeds = bool(getattr(net.config, "guidance_embeds", False))
    if requested is not None and not embeds:
        raise ValueError(
            f"teacher.embedded_guidance={requested} needs a guidance-distilled model (FLUX.1-dev); "
            f"this {type(net).__name__} has no guidance embeddings: use teacher.guidance (true CFG)"
        )
    if not embeds:
        return None
    return float(FLUX_DEV_GUIDANCE if requested is None else requested)
