"""EDM2's magnitude-preserving UNet and preconditioner (Karras et al. 2024), named as in NVlabs/edm2
``training/networks_edm2.py`` (their ``UNet`` and ``Precond`` are ``EDM2UNet`` and ``EDM2Precond``
here), so an official state dict loads with ``strict=True``.

Every layer keeps activations at unit magnitude: weights are normalised on every call (and, in
training, forced back to unit norm in place, Equation 66), sums and concatenations are weighted so
that unit inputs give unit outputs. EDM2 models are class-conditional ImageNet in the latent space of
a separate VAE; this module is the network only. Computation runs in the input's dtype promoted to
float32 (float64 stays float64); nothing works in place, so ``torch.func.jvp`` passes through.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.nets.edm import one_hot_or_zeros


def _at_least_f32(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def normalize(x: Tensor, dim: list[int] | int | None = None, eps: float = 1e-4) -> Tensor:
    """``x`` scaled to unit root-mean-square magnitude over ``dim`` (default: all but the first)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=_at_least_f32(x))
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: Tensor, f: list[int] = (1, 1), mode: str = "keep") -> Tensor:
    """Keep, or 2x down/upsample with the separable FIR filter ``f``."""
    if mode == "keep":
        return x
    if len(f) % 2:
        raise ValueError(f"resample filter {f} must have an even length")
    pad = (len(f) - 1) // 2
    f1 = torch.tensor(list(f), dtype=torch.float32)
    f2 = (f1.ger(f1) / f1.sum().square()).to(x.device, x.dtype)[None, None]
    c = x.shape[1]
    if mode == "down":
        return F.conv2d(x, f2.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    if mode != "up":
        raise ValueError(f"resample mode {mode!r}: choose keep, down or up")
    return F.conv_transpose2d(x, (f2 * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))


def mp_silu(x: Tensor) -> Tensor:
    """Magnitude-preserving SiLU (Equation 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Magnitude-preserving ``lerp(a, b, t)`` (Equation 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, dim: int = 1, t: float = 0.5) -> Tensor:
    """Magnitude-preserving concatenation with balance ``t`` (Equation 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features ``sqrt(2) cos(2 pi (f x + p))`` (Equation 75)."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        dtype = _at_least_f32(x)
        y = x.to(dtype).ger(self.freqs.to(dtype)) + self.phases.to(dtype)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel=[k, k]``) or linear layer (``kernel=[]``), Equation 47,
    with forced weight normalisation in training (Equation 66)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: list[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: Tensor, gain: float | Tensor = 1) -> Tensor:
        w = self.weight.to(_at_least_f32(x))
        if self.training and isinstance(self.weight, nn.Parameter):
            with torch.no_grad():  # forced weight normalisation: the stored weight stays on the unit sphere
                self.weight.copy_(normalize(w))
        w = normalize(w)
        w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(nn.Module):
    """EDM2's encoder / decoder block with optional self-attention (Figure 21)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        resample_filter: list[int] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ):
        super().__init__()
        self.out_channels, self.flavor = out_channels, flavor
        self.resample_filter, self.resample_mode = list(resample_filter), resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm

        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)  # pixel norm, then split
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = self.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        return x if self.clip_act is None else x.clamp(-self.clip_act, self.clip_act)


class EDM2UNet(nn.Module):
    """EDM2's UNet (Figure 21); ``block_kwargs`` go to every ``Block``."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: list[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: list[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs,
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # a constant-one channel lets the first conv see the image border
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(
                    cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs
                )
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="enc", attention=res in attn_resolutions, **block_kwargs
                )

        self.dec = nn.ModuleDict()
        skips = [b.out_channels for b in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="dec", attention=res in attn_resolutions, **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2Precond(nn.Module):
    """EDM2's preconditioner (EDM's, docs/methods.md 1.3) plus the learned uncertainty head ``logvar(sigma)``."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool = True,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
        **unet_kwargs,
    ):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, float(sigma_data)
        self.unet = EDM2UNet(
            img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs
        )
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    @property
    def num_classes(self) -> int:
        """Classes the denoiser is conditioned on (one-hot ``class_labels``; 0: unconditional)."""
        return self.label_dim

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        class_labels: Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
        **unet_kwargs,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``D(x, sigma)`` (and ``logvar`` (B, 1, 1, 1) with ``return_logvar``); x (B, C, H, W), sigma (B,)."""
        dtype = _at_least_f32(x)
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1, 1, 1, 1)
        labels = one_hot_or_zeros(class_labels, self.label_dim, x)
        net_dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else dtype

        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4

        F_x = self.unet((c_in * x).to(net_dtype), c_noise, labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(dtype)
        if return_logvar:
            return D_x, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return D_x
