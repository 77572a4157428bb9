"""Reading a cached feature classifier back, or saying it must be retrained."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Model = TypeVar("Model")


def load_cached(cache_dir: Path, weights_file: str, load: Callable[[Path], Model], what: str) -> Model | None:
    """``load(cache_dir)`` when ``cache_dir/weights_file`` exists and reads back; None when it is absent,
    and None with a warning when it is unreadable (the caller retrains and overwrites it)."""
    if not (cache_dir / weights_file).exists():
        return None
    try:
        return load(cache_dir)
    except Exception as err:  # safetensors, json and load_state_dict each raise their own types
        warnings.warn(
            f"cached {what} in {cache_dir} is unreadable ({type(err).__name__}: {err}); retraining it and "
            "overwriting the cache",
            stacklevel=3,
        )
        return None
