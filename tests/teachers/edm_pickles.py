"""EDM-format pickles written by the tests, without EDM's code.

``torch_utils.persistence`` pickles a network as ``_reconstruct_persistent_obj(meta)`` with
``meta = {type, version, module_src, class_name, state}``, ``state`` being the module's
``__dict__`` plus its init arguments. A fake ``torch_utils.persistence`` module is registered in
``sys.modules`` just long enough for pickle to name that function, and ``module_src`` is code that
writes a marker file if anything ever executes it.
"""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.nets.edm import EDMPrecond
from distill.nets.edm2 import EDM2Precond

EDM_NAMES = {"EDM2Precond": "Precond", "EDM2UNet": "UNet"}  # our class -> the name EDM's pickles carry
TINY_SONG = dict(
    model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)
TINY_DHARIWAL = dict(
    model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)
TINY_EDM2 = dict(
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channels_per_head=8, logvar_channels=8
)


def marker_source(marker: Path) -> str:
    """Module source that leaves ``marker`` behind if it is ever run."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"


@contextmanager
def fake_persistence() -> Iterator[Any]:
    """Stand-ins that pickle can name: ``torch_utils.persistence._reconstruct_persistent_obj`` (yielded)
    and ``dnnlib.util.EasyDict`` (EDM2 snapshots are EasyDicts), registered only inside the block."""

    def _reconstruct_persistent_obj(meta):  # the test readers must never call it
        raise AssertionError("the pickle's reconstruct function was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    modules = {
        name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    }
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    modules["dnnlib.util"].EasyDict = easydict
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield _reconstruct_persistent_obj
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


class PersistentStub:
    """Any other persistent object of EDM's (an EDM2 latent encoder, a loss): a class name and a state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


class PersistencePickler(pickle.Pickler):
    """Pickles our EDM modules as ``torch_utils.persistence`` does; torch containers and tensors as usual."""

    def __init__(self, file: Any, reconstruct: Any, module_src: str, init_kwargs: dict[int, dict]):
        super().__init__(file, protocol=4)
        self.reconstruct, self.module_src, self.init_kwargs = reconstruct, module_src, init_kwargs

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PersistentStub):
            return self.reconstruct, (
                dict(type="class", version=6, module_src=self.module_src, class_name=obj.class_name, state=obj.state),
            )
        if not (isinstance(obj, nn.Module) and type(obj).__module__.startswith("distill.nets.edm")):
            return NotImplemented
        state = {**obj.__dict__, "_init_args": (), "_init_kwargs": self.init_kwargs.get(id(obj), {})}
        name = EDM_NAMES.get(type(obj).__name__, type(obj).__name__)
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=name, state=state)
        return self.reconstruct, (meta,)


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight random (EDM zero-initialises output layers, which would hide differences)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen) + (1.0 if p.ndim == 0 else 0.0))
    return net.eval()


def tiny_edm(kind: str = "song", channels: int = 1, resolution: int = 8, label_dim: int = 0) -> tuple[nn.Module, dict]:
    """A small random EDM (``song``, ``dhariwal``) or EDM2 (``edm2``) network and its init kwargs."""
    torch.manual_seed(0)
    if kind == "edm2":
        kwargs = dict(
            img_resolution=resolution, img_channels=channels, label_dim=label_dim, use_fp16=False, **TINY_EDM2
        )
        return randomized(EDM2Precond(**kwargs)), kwargs
    kwargs = dict(
        img_resolution=resolution,
        img_channels=channels,
        label_dim=label_dim,
        **(TINY_SONG if kind == "song" else TINY_DHARIWAL),
    )
    return randomized(EDMPrecond(**kwargs)), kwargs


def write_edm_pickle(
    path: Path, net: nn.Module, init_kwargs: dict, marker: Path, extra: dict | None = None, easydict: bool = False
) -> Path:
    """``path`` holding ``{"ema": net, **extra}`` in EDM's pickle format (module_src writes ``marker``),
    as a ``dnnlib.util.EasyDict`` with ``easydict`` (as EDM2's training snapshots are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with fake_persistence() as reconstruct, path.open("wb") as f:
        top = {"ema": net, "loss_fn": None, **(extra or {})}
        top = sys.modules["dnnlib.util"].EasyDict(top) if easydict else top
        PersistencePickler(f, reconstruct, marker_source(marker), {id(net): init_kwargs}).dump(top)
    return path
