"""A diffusers ``UNet2DModel`` behind the ``(x, c_noise)`` contract, kept whole for export."""

from __future__ import annotations

from diffusers import UNet2DModel
from torch import Tensor, nn

from distill.core.conditioning import labels_for, null_labels


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
        self.extra_time, self.num_classes = extra_time, num_classes
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

    def forward(self, x: Tensor, c_noise: Tensor, c_extra: Tensor | None = None) -> Tensor:
        if self.extra_time and c_extra is None:
            raise ValueError("this UNet was built with extra_time=True: pass c_extra")
        if self.num_classes:
            labels = labels_for(x)
            c_extra = null_labels(x, self.num_classes) if labels is None else labels
        return self.model(x, c_noise, class_labels=c_extra).sample
