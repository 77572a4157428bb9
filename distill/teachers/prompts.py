"""Prompt embeddings for text-conditional teachers: encoded once, cached to disk in shards.

The text encoder and tokenizer come from the teacher's own pipeline directory (``text_encoder/``,
``tokenizer/``, loaded with ``from_pretrained`` from disk, safetensors only). A training run never
keeps the encoder: every prompt it needs (the dataset's captions, the empty prompt of
classifier-free guidance) is encoded up front into a table whose shards are cached under a
fingerprint of the encoder and the prompts, so a second run reads them back without encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from distill.core.io import cache_key, cached_in_shards, weight_summary
from distill.teachers.checkpoint import TeacherCheckpointError

SHARD_SIZE = 1024  # prompts per cached shard


class PromptEncoder:
    """``encode(prompts) -> (N, L, D)``: the last hidden states of a local text encoder, padded to
    the tokenizer's maximum length (as diffusers' text-to-image pipelines feed their UNets)."""

    def __init__(self, directory: str | Path):
        from transformers import (  # imported here: only text teachers need it
            AutoModel,
            AutoTokenizer,
        )

        directory = Path(directory)
        self.name = str(directory)
        missing = [d for d in ("text_encoder", "tokenizer") if not (directory / d).is_dir()]
        if missing:
            raise TeacherCheckpointError(
                f"{directory} has no {' or '.join(m + '/' for m in missing)}: a text-conditional "
                "teacher directory needs text_encoder/ and tokenizer/ beside unet/"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
            self.model = AutoModel.from_pretrained(
                directory / "text_encoder", use_safetensors=True, local_files_only=True
            ).eval()
        except (OSError, ValueError) as err:
            raise TeacherCheckpointError(
                f"cannot load the text encoder of {directory} ({err}): a text-conditional "
                "teacher directory needs text_encoder/ and tokenizer/ beside unet/"
            ) from err
        self.max_length = min(int(self.tokenizer.model_max_length), 512)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Tensor:
        out = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(
                list(prompts[start : start + batch_size]),
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            )
            out.append(self.model(input_ids=tokens["input_ids"]).last_hidden_state.float())
        return torch.cat(out)

    def fingerprint(self) -> str:
        """Changes with the encoder's weights and the tokenizer's length, not with where it lives."""
        return cache_key(repr((type(self.model).__name__, *weight_summary(self.model), self.max_length)))


def table_key(encoder_fingerprint: str, prompts: Sequence[str]) -> str:
    """The cache folder of an encoder's table of ``prompts``."""
    return cache_key(json.dumps([encoder_fingerprint, list(prompts)]))


def prompt_table(prompts: Sequence[str], encoder: PromptEncoder, cache_dir: str | Path | None) -> Tensor:
    """Embeddings of ``prompts`` (N, L, D), read from / written to ``cache_dir`` in shards."""
    folder = None if cache_dir is None else Path(cache_dir) / table_key(encoder.fingerprint(), prompts)
    return cached_in_shards(
        folder, len(prompts), SHARD_SIZE, "embeds", lambda start, stop: encoder.encode(prompts[start:stop])
    )
