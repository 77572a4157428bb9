"""The scripts under ``experiments/`` loaded as modules, for tests of their pieces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as the module ``name``; the folder is on the path while it loads,
    since some scripts import the Fashion-MNIST runner's profiles and helpers."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return module
