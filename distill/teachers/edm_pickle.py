"""Read EDM / EDM2 network pickles without running any code from them.

NVlabs' ``torch_utils.persistence`` pickles each network class *with its source code*:
unpickling calls ``_reconstruct_persistent_obj(meta)``, which ``exec``s ``meta["module_src"]``. Here
a restricted ``pickle.Unpickler`` resolves only an allow-list of globals:

- ``_reconstruct_persistent_obj`` becomes a recorder returning a ``Record`` (class name and the
  object's ``__dict__``: init kwargs, parameters, buffers, submodules); the source is never run;
- torch's tensor and parameter rebuild functions (storages pickled as bytes are read with
  ``torch.load(..., weights_only=True)``);
- ``collections.OrderedDict``, ``set``, numpy scalars and arrays, ``dnnlib``'s ``EasyDict`` (as ``dict``), and
  ``torch.nn`` containers (``ModuleDict`` ...) as plain ``Record``s.

Any other global refuses the whole file with an ``EDMPickleError`` naming it.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as numpy_array
    from numpy._core.multiarray import scalar as numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as numpy_array
    from numpy.core.multiarray import scalar as numpy_scalar

from distill.teachers.checkpoint import TeacherCheckpointError

PERSISTENCE_MODULES = ("torch_utils.persistence",)
EASYDICT = (("dnnlib.util", "EasyDict"), ("dnnlib", "EasyDict"))
TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential", "ParameterDict", "ParameterList")


class EDMPickleError(TeacherCheckpointError):
    """An EDM pickle that is refused (it names something outside the allow-list) or unreadable."""


@dataclass
class Record:
    """A pickled module, recorded instead of rebuilt: its class name and its ``__dict__``."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:  # BUILD of a torch.nn container
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise EDMPickleError(f"a pickled {self.class_name} has a state of type {type(state).__name__}, not a dict")
        self.state = dict(state)

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return dict(self.state.get("_init_kwargs") or {})

    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})


def _record_persistent(meta: dict[str, Any]) -> Record:
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: records, never ``exec``s."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise EDMPickleError("a persistent object in the pickle is not a recorded class (type != 'class')")
    state = meta.get("state")
    return Record(meta["class_name"], dict(state) if isinstance(state, dict) else {})


def _container(name: str) -> type:
    """A ``Record`` subclass standing in for a ``torch.nn`` container class in NEWOBJ / BUILD."""

    def new(cls, *args: Any) -> Record:
        return Record(name)

    return type(name, (Record,), {"__new__": new})


def _reconstructor(cls: Any, base: Any, state: Any) -> Record:
    """Protocol 0/1 ``copyreg._reconstructor``: only for the container stand-ins above."""
    if not (isinstance(cls, type) and issubclass(cls, Record)) or base is not object:
        raise EDMPickleError(f"copyreg._reconstructor called on {cls!r}: only torch.nn containers are allowed")
    return cls.__new__(cls)


def _load_storage(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without unpickling code: a storage saved by ``torch.save``."""
    if not isinstance(data, (bytes, bytearray)):
        raise EDMPickleError("a tensor storage in the pickle is not stored as bytes")
    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_tensor(
    storage: Any,
    offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage):
        raise EDMPickleError(f"a tensor in the pickle is built on a {type(storage).__name__}, not a torch storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None, *state: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise EDMPickleError(f"a parameter in the pickle holds a {type(data).__name__}, not a tensor")
    return data.detach()


def _numpy_array(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays only (no subclasses)."""
    if cls is not np.ndarray:
        raise EDMPickleError(f"a numpy array of class {cls!r} in the pickle: only numpy.ndarray is allowed")
    return numpy_array(cls, shape, dtype)


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    # numpy scalars and arrays (EDM2's latent encoder keeps its scale and bias as arrays)
    **{(module, "scalar"): numpy_scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_reconstruct"): _numpy_array for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, "_reconstruct_persistent_obj"): _record_persistent for module in PERSISTENCE_MODULES},
    **{key: dict for key in EASYDICT},
    **{
        (module, name): _container(name)
        for name in TORCH_CONTAINERS
        for module in ("torch.nn.modules.container", "torch.nn")
    },
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``ALLOWED`` globals and no persistent ids."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise EDMPickleError(
                f"{self.source} names the global {module}.{name}, which is not on the allow-list of EDM network "
                "pickles: the file is refused (nothing from it was run). Only EDM / EDM2 network pickles "
                "(torch_utils.persistence records of tensors) are read; convert other checkpoints to safetensors"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise EDMPickleError(
            f"{self.source} uses a persistent id ({str(pid)[:40]}): it is not an EDM pickle (a "
            "torch.save file?); the file is refused"
        )


def read_edm_pickle(path: str | Path) -> Any:
    """The pickle's top object with every persistent network as a ``Record`` (no code run)."""
    path = Path(path)
    if not path.is_file():
        raise EDMPickleError(f"{path} does not exist: point teacher.path at an EDM / EDM2 .pkl")
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except EDMPickleError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError) as err:
            raise EDMPickleError(f"{path} is not a readable EDM pickle ({type(err).__name__}: {err})") from err
