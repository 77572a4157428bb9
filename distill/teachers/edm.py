"""EDM / EDM2 teachers: a preconditioned EDM network behind the velocity contract ``model(x_s, s) -> v``.

Every EDM preconditioner (EDM, VP, VE, EDM2) is a denoiser ``D(x, sigma) ~ x0`` in VE coordinates,
so one adapter serves them all: x0-prediction on the EDM process (``distill.core.adapt``), with
sigma clamped to the range EDM's own sampler uses (``[max(0.002, net.sigma_min), min(80,
net.sigma_max)]``). Class-conditional networks take one-hot labels from
``distill.core.conditioning``; they were trained without a null class, so classifier-free guidance
is refused. EDM2 networks denoise VAE latents; the VAE is not part of the pickle and is not loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.adapt import to_velocity_model
from distill.core.conditioning import labels_for
from distill.core.process import EDM
from distill.nets.edm2 import Block as EDM2Block
from distill.nets.edm_layers import UNetBlock
from distill.teachers.base import Teacher
from distill.teachers.checkpoint import CONFIG_NAME
from distill.teachers.edm_checkpoint import (
    KIND,
    convert_edm_pickle,
    data_shape_of,
    file_digest,
    load_converted,
    network_from_pickle,
)
from distill.teachers.edm_pickle import EDMPickleError

SAMPLER_SIGMA_MIN, SAMPLER_SIGMA_MAX = 0.002, 80.0  # EDM's deterministic sampler defaults
NO_NULL_CLASS = (
    "EDM / EDM2 networks are trained without a null class (no label dropout), so classifier-free "
    "guidance has no unconditional prediction to use: keep teacher.guidance=1"
)


class EDMVelocity(nn.Module):
    """An EDM preconditioner ``net(x, sigma, class_labels)`` as a velocity model in FM coordinates."""

    scheme = KIND
    prediction = "x0"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.num_classes = int(net.label_dim)
        self.data_shape = data_shape_of(net)  # read by methods that build discriminators before seeing data
        self.process = EDM(
            sigma_min=max(SAMPLER_SIGMA_MIN, float(getattr(net, "sigma_min", 0.0))),
            sigma_max=min(SAMPLER_SIGMA_MAX, float(getattr(net, "sigma_max", float("inf")))),
            sigma_data=float(getattr(net, "sigma_data", 0.5)),
        )

    def native(self, x: Tensor, sigma: Tensor) -> Tensor:
        """EDM's denoised ``x0`` at noise level ``sigma`` (B,), for the current batch's labels."""
        return self.net(x, sigma, class_labels=self.one_hot_labels(x)).to(x.dtype)

    def one_hot_labels(self, x: Tensor) -> Tensor | None:
        labels = labels_for(x) if self.num_classes else None
        if labels is None:
            return None  # EDM feeds zeros to a conditional net given no labels
        if bool((labels < 0).any()) or bool((labels >= self.num_classes).any()):
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}; {NO_NULL_CLASS}")
        return F.one_hot(labels.long(), self.num_classes).to(x.dtype)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return to_velocity_model(self.native, self.process, self.prediction)(x, s)  # per call: deepcopy-safe


def edm_teacher(net: nn.Module, meta: dict) -> Teacher:
    model = EDMVelocity(net)
    return Teacher(model, model.data_shape, meta)


def set_block_dropout(net: nn.Module, p: float) -> int:
    """In place: the dropout rate of every EDM / EDM2 block (``UNetBlock`` / ``Block``) set to ``p``;
    returns how many blocks. A pickle records the rate its network was trained with, while
    distillation recipes choose their own for the networks they train (ECT 0.2, DMD2 and GDD 0)."""
    if not 0.0 <= p < 1.0:
        raise EDMPickleError(f"teacher.train_dropout={p} must lie in [0, 1)")
    blocks = [m for m in net.modules() if isinstance(m, (UNetBlock, EDM2Block))]
    for block in blocks:
        block.dropout = float(p)
    return len(blocks)


def cached_conversion(path: Path, cache_dir: Path) -> Path:
    """The converted directory of ``path`` under ``cache_dir`` (``<stem>-<sha256[:16]>``), made once."""
    target = cache_dir / f"{path.stem}-{file_digest(path)[:16]}"
    if not (target / CONFIG_NAME).is_file():
        convert_edm_pickle(path, target)
    return target


def load_edm_teacher(
    path: str | Path, cache_dir: str | Path | None = None, guidance: float = 1.0, train_dropout: float | None = None
) -> Teacher:
    """A frozen teacher from an EDM / EDM2 ``.pkl`` (converted once into ``cache_dir``, or in memory
    when it is None) or from a directory written by ``distill-convert-edm``. ``train_dropout`` (None:
    the pickle's) is the dropout rate of the copies trained from it: students, fake-score nets."""
    teacher = _load_edm_teacher(Path(path), cache_dir, guidance)
    if train_dropout is not None:  # the teacher itself runs in eval mode: only its trained copies drop out
        set_block_dropout(teacher.model.net, train_dropout)
    return teacher


def _load_edm_teacher(path: Path, cache_dir: str | Path | None, guidance: float) -> Teacher:
    if guidance != 1.0:
        raise EDMPickleError(f"teacher.guidance={guidance}: {NO_NULL_CLASS}")
    if path.is_dir():
        return edm_teacher(*load_converted(path))
    if not path.is_file():
        raise EDMPickleError(
            f"teacher.path={path} does not exist: point it at an EDM / EDM2 .pkl or a directory "
            "written by `distill-convert-edm`"
        )
    if cache_dir is None:
        net, spec = network_from_pickle(path)
        return edm_teacher(net, {"kind": KIND, **spec, "source": str(path)})
    return edm_teacher(*load_converted(cached_conversion(path, Path(cache_dir))))
