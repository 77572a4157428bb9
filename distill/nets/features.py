"""Reading a network's intermediate features: which layers, and how to capture them in one forward.

Discriminators in distribution-matching methods do not own a backbone: DMD2 reads the trainable
fake-score network's bottleneck, GDD a frozen teacher's encoder (docs/methods.md 5.4, 7, 11). A
``FeatureTap`` records the outputs of named submodules during an ordinary forward pass and can
cut that pass short after the deepest one, so an encoder-only read skips the decoder's compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


class _StopForward(Exception):
    """Raised by the deepest hook to skip the rest of a forward whose output nobody needs."""


class FeatureTap:
    """Capture the outputs of ``layers`` (dotted submodule names of ``root``) during ``run()``.

    Args:
        root: the module whose submodules are read.
        layers: dotted names, e.g. ``net.model.mid_block``; each must output one tensor.
        stop_after_last: raise out of the forward once every layer has fired (encoder-only reads).
    """

    def __init__(self, root: nn.Module, layers: Sequence[str], stop_after_last: bool = False):
        if not layers:
            raise ValueError("a FeatureTap needs at least one layer name")
        modules = dict(root.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ValueError(f"{type(root).__name__} has no submodule(s) {missing}; see `named_modules()` for names")
        self.root, self.layers, self.stop_after_last = root, list(layers), stop_after_last
        self.modules = [modules[name] for name in self.layers]

    def run(self, forward: Callable[[], object]) -> list[Tensor]:
        """Call ``forward()`` (which evaluates ``root``) and return the layers' outputs, in ``layers`` order."""
        captured: dict[int, Tensor] = {}

        def hook_for(index: int):
            def hook(module: nn.Module, args, output) -> None:
                captured[index] = output[0] if isinstance(output, tuple) else output
                if self.stop_after_last and len(captured) == len(self.modules):
                    raise _StopForward

            return hook

        handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(self.modules)]
        try:
            forward()
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if len(captured) != len(self.modules):
            never = [self.layers[i] for i in range(len(self.modules)) if i not in captured]
            raise RuntimeError(f"layers {never} did not run in the forward pass")
        return [captured[i] for i in range(len(self.modules))]


def has_parameters(module: nn.Module) -> bool:
    """False for analytic models (e.g. the exact Gaussian-mixture field): nothing to read features from."""
    return any(True for _ in module.parameters())


def _inner(model: nn.Module) -> tuple[str, nn.Module]:
    """The raw network inside our wrappers: ``VelocityModel.net`` (and a ``UNet``'s diffusers ``model``),
    or the UNet inside an EDM teacher's preconditioner (``EDMVelocity.net.model`` / ``.net.unet``)."""
    prefix, net = "", model
    if hasattr(net, "net") and isinstance(net.net, nn.Module):
        prefix, net = "net.", net.net
    if hasattr(net, "model") and isinstance(net.model, nn.Module) and hasattr(net.model, "mid_block"):
        prefix, net = prefix + "model.", net.model
    for attr in ("model", "unet"):  # EDMPrecond / VPPrecond / VEPrecond hold ``model``, EDM2's Precond ``unet``
        if _is_edm_unet(getattr(net, attr, None)):
            prefix, net = f"{prefix}{attr}.", getattr(net, attr)
    return prefix, net


def _is_edm_unet(net: object) -> bool:
    """EDM's SongUNet / DhariwalUNet and EDM2's UNet: ``enc`` and ``dec`` dicts of ``<res>x<res>_<block>``."""
    return isinstance(getattr(net, "enc", None), nn.ModuleDict) and isinstance(getattr(net, "dec", None), nn.ModuleDict)


def _edm_encoder_ends(net: nn.Module) -> list[str]:
    """The last encoder entry at each resolution (``enc.32x32_block3``, ..., ``enc.8x8_block3``): a block,
    since EDM adds every resolution's resampling and aux layers before its blocks."""
    last_at: dict[str, str] = {}
    for name in net.enc:
        last_at[name.split("_")[0]] = name
    return [f"enc.{name}" for name in last_at.values()]


def _edm_middle(net: nn.Module) -> str:
    """The last of EDM's two middle blocks (``dec.<lowest res>_in1``), which open the decoder."""
    return "dec." + [name for name in net.dec if "_in" in name][-1]


def bottleneck_layer(model: nn.Module) -> str:
    """Dotted name of the network's bottleneck: a UNet's middle block, an EDM UNet's encoder output,
    an MLP's last block, or a transformer's middle block (DMD2 puts its GAN head there)."""
    prefix, net = _inner(model)
    if getattr(net, "mid_block", None) is not None:
        return prefix + "mid_block"
    if _is_edm_unet(net):  # DMD2's EDM code reads the encoder's output (``return_bottleneck``)
        return prefix + _edm_encoder_ends(net)[-1]
    if isinstance(getattr(net, "transformer_blocks", None), nn.ModuleList):
        middle = len(net.transformer_blocks) // 2
        return f"{prefix}transformer_blocks.{middle}{_image_stream(net.transformer_blocks[middle])}"
    if isinstance(getattr(net, "blocks", None), nn.ModuleList):
        return f"{prefix}blocks.{len(net.blocks) - 1}"
    raise ValueError(f"no known bottleneck in a {type(net).__name__}: name the layer (method.*.layers)")


def _image_stream(block: nn.Module) -> str:
    """Joint text-image blocks (SD3, FLUX.1, Qwen-Image) return (text, image) tokens, the text side
    None in SD3's last block: read their image MLP instead, whose output is the image tokens alone."""
    for mlp in ("ff", "img_mlp"):
        if any(hasattr(block, text) for text in ("ff_context", "txt_mlp")) and hasattr(block, mlp):
            return f".{mlp}"
    return ""


def encoder_layers(model: nn.Module) -> list[str]:
    """Multi-scale encoder features: every down block of a UNet and its middle block (EDM: each
    resolution's last encoder block and the last middle block); for an MLP every residual block
    (projected-GAN style: one discriminator head per scale)."""
    prefix, net = _inner(model)
    if _is_edm_unet(net):
        return [prefix + name for name in [*_edm_encoder_ends(net), _edm_middle(net)]]
    if isinstance(getattr(net, "down_blocks", None), nn.ModuleList):
        names = [f"{prefix}down_blocks.{i}" for i in range(len(net.down_blocks))]
        return names + ([prefix + "mid_block"] if getattr(net, "mid_block", None) is not None else [])
    if isinstance(getattr(net, "blocks", None), nn.ModuleList):
        return [f"{prefix}blocks.{i}" for i in range(len(net.blocks))]
    return [bottleneck_layer(model)]


def read_features(
    root: nn.Module, layers_of: Callable[[nn.Module], Sequence[str]], x: Tensor, s: Tensor
) -> list[Tensor]:
    """``root(x, s)``'s outputs at the layers ``layers_of(root)`` names, the forward cut after the deepest.

    An analytic model (no parameters, no layers) has nothing to read: its "features" are x itself.
    """
    if not has_parameters(root):
        return [x]
    return FeatureTap(root, layers_of(root), stop_after_last=True).run(lambda: root(x, s))


def forward_with_features(root: nn.Module, layers: Sequence[str], x: Tensor, s: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``root(x, s)`` and its outputs at ``layers``, from one forward (a discriminator sharing the
    network it reads, as SiDA's fake-score encoder). An analytic model's "features" are x itself."""
    if not has_parameters(root):
        return root(x, s), [x]
    outputs: list[Tensor] = []
    features = FeatureTap(root, layers).run(lambda: outputs.append(root(x, s)))
    return outputs[0], features
