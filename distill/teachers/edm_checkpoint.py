"""EDM / EDM2 pickles to our native networks, and to the teacher directory format.

A pickle's ``ema`` network (or its top object) is read as a ``Record`` (``edm_pickle``: no code
run), our class of the same name is built from the recorded init kwargs, and the recorded
parameters and buffers load into it with ``strict=True``. The converted teacher is ``teacher.json``
(``kind: edm``, the EDM class name and init kwargs) + ``model.safetensors`` (the state dict).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from torch import Tensor, nn

from distill.core.io import load_weights, save_json, save_weights
from distill.nets.edm import EDMPrecond, VEPrecond, VPPrecond
from distill.nets.edm2 import EDM2Precond
from distill.teachers.checkpoint import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from distill.teachers.edm_pickle import EDMPickleError, Record, read_edm_pickle

# EDM class name (as recorded in the pickle) -> our class; EDM2's preconditioner is called ``Precond``.
NATIVE: dict[str, type[nn.Module]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "Precond": EDM2Precond,
}
NETWORK_KEYS = ("ema", "net")  # where EDM's training snapshots keep the network to sample with
KIND = "edm"


def network_record(obj: Any, source: str) -> Record:
    """The record of the network to use: the pickle's ``ema`` entry, or the pickle itself."""
    if isinstance(obj, Record):
        return obj
    if isinstance(obj, dict):
        for key in NETWORK_KEYS:
            if isinstance(obj.get(key), Record):
                return obj[key]
        raise EDMPickleError(
            f"{source} holds a dict with keys {sorted(map(str, obj))} but no network under "
            f"{' or '.join(NETWORK_KEYS)}: is it an EDM / EDM2 network snapshot?"
        )
    raise EDMPickleError(f"{source} holds a {type(obj).__name__}, not an EDM network or snapshot dict")


def recorded_state_dict(record: Record, prefix: str = "") -> dict[str, Tensor]:
    """Parameters and persistent buffers of a recorded module tree, named as ``state_dict`` names them."""
    state = record.state
    out = {prefix + k: v for k, v in (state.get("_parameters") or {}).items() if v is not None}
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    out.update({prefix + k: v for k, v in (state.get("_buffers") or {}).items() if v is not None and k not in skipped})
    for name, child in record.children().items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise EDMPickleError(f"submodule {prefix}{name} was pickled as a {type(child).__name__}, not a module")
        out.update(recorded_state_dict(child, f"{prefix}{name}."))
    bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
    if bad:
        raise EDMPickleError(f"{bad[0]} in the pickle is not a tensor")
    return out


def plain(value: Any) -> Any:
    """Init kwargs as JSON-safe Python: numpy scalars and arrays to numbers and lists, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise EDMPickleError(f"an init argument of type {type(value).__name__} cannot be stored ({value!r})")


def build_native(class_name: str, init_args: list, init_kwargs: dict[str, Any], source: str) -> nn.Module:
    """Our network for an EDM class name and its recorded init arguments."""
    if class_name not in NATIVE:
        raise EDMPickleError(
            f"{source} holds an EDM {class_name}; supported networks: {sorted(NATIVE)} (a bare "
            "SongUNet / DhariwalUNet / UNet lacks the preconditioning that says what it predicts)"
        )
    try:
        return NATIVE[class_name](*init_args, **init_kwargs)
    except (TypeError, ValueError) as err:
        raise EDMPickleError(
            f"{source}: {class_name}'s recorded init kwargs {init_kwargs} do not build our "
            f"{NATIVE[class_name].__name__} ({err})"
        ) from err


def load_strict(net: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, with every mismatch listed by kind first."""
    ours = net.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs ours {tuple(ours[k].shape)}"
        for k in sorted(set(ours) & set(state))
        if state[k].shape != ours[k].shape
    ]
    if missing or unexpected or shapes:

        def first(items: list[str]) -> str:
            return ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")

        raise EDMPickleError(
            f"{source}: weights do not match {type(net).__name__} built from the recorded kwargs: "
            f"{len(missing)} missing ({first(missing)}), {len(unexpected)} unexpected "
            f"({first(unexpected)}), {len(shapes)} of another shape ({first(shapes)})"
        )
    net.load_state_dict(state, strict=True)


def spec_of(record: Record) -> dict[str, Any]:
    """How to rebuild a recorded network: EDM class name and init arguments (JSON-safe)."""
    return {
        "edm_class": record.class_name,
        "init_args": plain(record.init_args),
        "init_kwargs": plain(record.init_kwargs),
    }


def data_shape_of(net: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the samples a preconditioned EDM network denoises."""
    return (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))


def network_from_pickle(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(our network with the pickle's weights, its spec)``; the spec also names a latent encoder
    recorded beside the network (EDM2), which is not loaded."""
    source = str(path)
    top = read_edm_pickle(path)
    record = network_record(top, source)
    spec = spec_of(record)
    net = build_native(spec["edm_class"], spec["init_args"], spec["init_kwargs"], source)
    load_strict(net, recorded_state_dict(record), source)
    encoder = top.get("encoder") if isinstance(top, dict) else None
    if isinstance(encoder, Record):
        public = {k: v for k, v in encoder.state.items() if not k.startswith("_")}  # e.g. vae_name, scale, bias
        spec["encoder"] = {"class": encoder.class_name, "init_kwargs": plain(encoder.init_kwargs), **plain(public)}
    return net.eval().requires_grad_(False), spec


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_edm_pickle(path: str | Path, out_dir: str | Path) -> Path:
    """Write the pickle's network as a teacher directory: weights first, ``teacher.json`` last."""
    net, spec = network_from_pickle(path)
    out_dir = Path(out_dir)
    save_weights(out_dir / WEIGHTS_NAME, net.state_dict())
    config = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        **spec,
        "data_shape": list(data_shape_of(net)),
        "source": str(path),
        "sha256": file_digest(path),
    }
    save_json(out_dir / CONFIG_NAME, config)
    return out_dir


def load_converted(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(network, teacher.json)`` of a directory written by ``convert_edm_pickle``."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
        net = build_native(config["edm_class"], config["init_args"], config["init_kwargs"], str(directory))
        load_strict(net, load_weights(directory / WEIGHTS_NAME), str(directory))
    except (OSError, json.JSONDecodeError, KeyError, SafetensorError) as err:
        raise EDMPickleError(
            f"{directory} is not a converted EDM teacher ({type(err).__name__}: {err}): "
            "convert the pickle again with `distill-convert-edm <pkl> <dir>`"
        ) from err
    return net.eval().requires_grad_(False), config
