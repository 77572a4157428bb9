"""A diffusers ``UNet2DModel`` behind the ``(x, c_noise)`` contract, kept whole for export."""

from __future__ import annotations

from diffusers import UNet2DModel
from torch import Tensor, nn

from distill.core.conditioning import guidance_of, labels_for, null_labels
from distill.nets.embedding import guidance_feature, zero_init_embedding


class UNet(nn.Module):
    """Wraps ``UNet2DModel``; ``c_noise`` is fed as the diffusers timestep (any real value).

    Args:
        sample_size: image side length.
        channels: image channels (input and output).
        block_out_channels: channels per resolution level.
        layers_per_block: residual blocks per level.
        attention: add self-attention at the lowest resolution and in the middle block.
        norm_num_groups: GroupNorm groups (must divide every channel count).
        extra_time: take a second time input ``c_extra`` (MeanFlow's ``t - r``) through diffusers'
            ``class_embed_type="timestep"``; its last linear is zero, so the net starts as without it.
        num_classes: class-conditional on ``distill.core.conditioning``'s labels (0: unconditional);
            the embedding has one more row, the null class of classifier-free guidance.
        guidance_embed: take each sample's guidance scale w (the condition's ``guidance_scale``, else
            ``default_guidance``): a zero-initialised embedding of ``guidance_feature(w)`` is added to
            diffusers' time embedding (as FLUX.1-dev's guidance embedding is), so at one w it is a
            constant that export folds into the time embedding's last bias (``bake_guidance``).
        default_guidance: the w of calls whose condition carries none.
    """

    def __init__(
        self,
        sample_size: int,
        channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        attention: bool = False,
        norm_num_groups: int = 8,
        extra_time: bool = False,
        num_classes: int = 0,
        guidance_embed: bool = False,
        default_guidance: float = 1.0,
    ):
        super().__init__()
        if extra_time and num_classes:
            raise ValueError(
                "extra_time (MeanFlow) and num_classes both need diffusers' class embedding: "
                "class-conditional MeanFlow students are not supported"
            )
        self.config = {
            "sample_size": sample_size,
            "channels": channels,
            "block_out_channels": tuple(block_out_channels),
            "layers_per_block": layers_per_block,
            "attention": attention,
            "norm_num_groups": norm_num_groups,
            "extra_time": extra_time,
            "num_classes": num_classes,
        }
        if guidance_embed:  # only then, so that the configs of other nets stay as they were
            self.config.update(guidance_embed=True, default_guidance=float(default_guidance))
        self.extra_time, self.num_classes = extra_time, num_classes
        # Registered before the UNet, whose last layer stays the last one (ArcFlow's heads replace it).
        time_dim = 4 * block_out_channels[0]  # diffusers' time_embed_dim
        self.guidance_embed = zero_init_embedding(time_dim // 4, time_dim) if guidance_embed else None
        self.default_guidance = float(default_guidance)
        levels = len(block_out_channels)
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.model = UNet2DModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            add_attention=attention,
            norm_num_groups=norm_num_groups,
            class_embed_type="timestep" if extra_time else None,
            num_class_embeds=num_classes + 1 if num_classes else None,
        )
        if extra_time:
            last = self.model.class_embedding.linear_2
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def guidance_embedding(self, w: Tensor) -> Tensor:
        """What the guidance scales w (B,) add to diffusers' time embedding."""
        return self.guidance_embed(guidance_feature(w))

    def forward(self, x: Tensor, c_noise: Tensor, c_extra: Tensor | None = None) -> Tensor:
        if self.extra_time and c_extra is None:
            raise ValueError("this UNet was built with extra_time=True: pass c_extra")
        if self.num_classes:
            labels = labels_for(x)
            c_extra = null_labels(x, self.num_classes) if labels is None else labels
        if self.guidance_embed is None:
            return self.model(x, c_noise, class_labels=c_extra).sample
        added = self.guidance_embedding(guidance_of(x, self.default_guidance))
        # A hook for this call only: nothing stateful survives into copies (EMA, target nets) or exports.
        hook = self.model.time_embedding.register_forward_hook(lambda module, args, emb: emb + added.to(emb.dtype))
        try:
            return self.model(x, c_noise, class_labels=c_extra).sample
        finally:
            hook.remove()
