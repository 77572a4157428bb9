"""Teacher checkpoints: ``teacher.json`` (how to rebuild the net) + ``model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from distill.core.io import load_weights, save_json, save_weights
from distill.nets.factory import build_net
from distill.nets.velocity import VelocityModel
from distill.teachers.base import Teacher

FORMAT_VERSION = 1
CONFIG_NAME = "teacher.json"
WEIGHTS_NAME = "model.safetensors"


class TeacherCheckpointError(FileNotFoundError):
    """A teacher directory that is missing, incomplete or unreadable."""


def save_teacher(
    directory: str | Path,
    model: VelocityModel,
    net_spec: dict[str, Any],
    data_shape: tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a loadable teacher: weights first, config last, so a config implies complete weights."""
    directory = Path(directory)
    save_weights(directory / WEIGHTS_NAME, model.state_dict())
    config = {
        "format_version": FORMAT_VERSION,
        "net": dict(net_spec),
        "scheme": model.scheme,
        "sigma_data": model.sigma_data,
        "data_shape": list(data_shape),
        **(meta or {}),
    }
    save_json(directory / CONFIG_NAME, config)
    return directory


# Cached teachers the configs name beside the plain `<dataset>` one, and the targets that build them.
MAKE_TARGETS = {"digits_s1": "teachers-extra", "digits_w": "teachers-extra", "digits_2rf": "teacher-reflow"}


def how_to_build(name: str) -> str:
    """The command that makes the missing teacher named ``name`` (a cache directory name)."""
    if name in MAKE_TARGETS:
        return f"build it with `make {MAKE_TARGETS[name]}`"
    return "train one with `distill-pretrain dataset=<name>` (or `make teacher`)"


def load_teacher(directory: str | Path) -> Teacher:
    """Rebuild a frozen teacher from ``directory``; every failure names the fix."""
    directory = Path(directory)
    hint = (
        f"{how_to_build(directory.name)}, or point teacher.path at a directory holding teacher.json "
        "and model.safetensors"
    )
    if not directory.is_dir():
        raise TeacherCheckpointError(f"teacher.path={directory} does not exist: {hint}")
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise TeacherCheckpointError(f"{config_path} is missing: {hint}")
    if not weights_path.is_file():
        raise TeacherCheckpointError(f"{weights_path} is missing (teacher without weights): {hint}")
    try:
        config = json.loads(config_path.read_text())
        if config.get("kind") == "edm":  # written by distill-convert-edm (imported here: it imports this module)
            from distill.teachers.edm import load_edm_teacher

            return load_edm_teacher(directory)
        model = VelocityModel(
            build_net(config["net"], tuple(config["data_shape"])), config["scheme"], config["sigma_data"]
        )
        model.load_state_dict(load_weights(weights_path))
    except (json.JSONDecodeError, KeyError, SafetensorError, RuntimeError, OSError) as err:
        raise TeacherCheckpointError(
            f"teacher checkpoint {directory} is corrupt or from another version ({err}): {hint}"
        ) from err
    return Teacher(model, tuple(config["data_shape"]), config)
