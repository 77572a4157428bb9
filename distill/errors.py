"""User-facing errors: each names the cause and the fix, and the CLI prints it without a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from distill.core.errors import ConfigError
from distill.data.errors import DatasetError
from distill.teachers.checkpoint import TeacherCheckpointError

F = TypeVar("F", bound=Callable)


class CheckpointError(RuntimeError):
    """A training checkpoint that is corrupt, non-finite, or from another method or student."""


class DivergenceError(RuntimeError):
    """Training stopped after too many non-finite steps in a row."""


USER_ERRORS = (ConfigError, CheckpointError, DivergenceError, DatasetError, TeacherCheckpointError, FileNotFoundError)


def friendly_errors(main: F) -> F:
    """Print user errors as one line on stderr and exit 2 (``DISTILL_FULL_ERROR=1`` shows the traceback)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("DISTILL_FULL_ERROR"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
