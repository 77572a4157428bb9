"""Nothing the framework reads from a user's files can run code: weights load as safetensors or
``torch.load(weights_only=True)``, and the one pickle format we must read (CIFAR-10) goes through
an unpickler that only rebuilds arrays."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from distill.data import DatasetError
from distill.data.cifar10 import read_cifar_batch

REPO = Path(__file__).resolve().parents[2]


def calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == name
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == module
    ]


def keyword(call: ast.Call, name: str) -> object:
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_every_load_in_the_tree_is_safe():
    for path in [*(REPO / "distill").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for call in calls(tree, "torch", "load"):
            assert keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
        for call in calls(tree, "np", "load"):
            assert keyword(call, "allow_pickle") is not True, f"{path}:{call.lineno}: np.load(allow_pickle=True)"
        for name in ("load", "loads"):
            assert not calls(tree, "pickle", name), f"{path}: pickle.{name} runs whatever the file names"


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this would have run",))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": RunsCode()}, protocol=2))
    with pytest.raises(DatasetError, match=r"\.system is not part of a CIFAR-10 batch and is not loaded"):
        read_cifar_batch(batch)
