"""Prompt-only datasets: text prompts and no images, for data-free distillation of text teachers.

A row is a prompt index (the batch's label, which looks the prompt's embedding up in the teacher's
prompt table); ``x`` is a stand-in of the sample shape until the build replaces the rows with the
teacher's own samples for those prompts (``distill.build.prompt_only_training_set``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from distill.data.errors import DatasetError


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"dataset.path={path} is not a file: point it at a text file with one prompt per line "
            "(or list them: dataset.prompts=[...])"
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_prompts(prompts: Sequence[str], source: str) -> list[str]:
    prompts = [str(p).strip() for p in prompts]
    if not any(prompts):
        raise DatasetError(
            f"{source} holds no prompts: write one prompt per line (or list them: dataset.prompts=[...])"
        )
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise DatasetError(f"{source} has empty prompts at positions {empty[:5]}: remove them")
    return prompts


class PromptDataset(Dataset[tuple[Tensor, Tensor]]):
    """``repeats`` rows per prompt, row i asking for prompt ``i mod len(prompts)``; ``x`` is zeros of
    ``shape`` (made per batch, never stored: a prompt set may be large and its samples big)."""

    def __init__(self, prompts: Sequence[str], shape: tuple[int, ...], repeats: int = 1):
        if repeats < 1:
            raise DatasetError(f"dataset.repeats={repeats} must be >= 1")
        self.captions, self.shape, self.repeats = list(prompts), tuple(shape), repeats
        self.labels = [i % len(self.captions) for i in range(len(self.captions) * repeats)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(self.shape), torch.tensor(self.labels[index], dtype=torch.int64)
