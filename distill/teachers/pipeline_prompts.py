"""Prompt inputs of the text-to-image transformers, made by their own pipelines' ``encode_prompt``.

SD3 (two CLIPs + T5), FLUX.1 (CLIP + T5) and Qwen-Image (Qwen2.5-VL) each build their prompt
inputs their own way; rather than re-implement that, the pipeline class is loaded from the
teacher's directory without its transformer and VAE (text encoders only, safetensors, from disk)
and its ``encode_prompt`` is called. Every prompt becomes a row of a condition table
(``encoder_hidden_states``, plus ``pooled_projections`` or ``encoder_hidden_states_mask``),
cached in shards under a fingerprint of the encoders and the prompts, as ``prompts.py`` does
for CLIP-conditioned UNets. A table is stored in float32 at ``max_sequence_length`` tokens (a
FLUX T5 row at 512 tokens is 8 MB): shorten it for short captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import diffusers
import torch
from torch import Tensor

from distill.core.conditioning import POOLED, PROMPT_MASK, PROMPTS, Condition
from distill.core.io import cache_key, cached_in_shards, weight_summary
from distill.teachers.checkpoint import TeacherCheckpointError
from distill.teachers.prompts import table_key
from distill.teachers.transformers import TEXT_TRANSFORMERS

SHARD_SIZE = 256  # prompts per cached shard (T5 / Qwen rows are large)
# the pipelines' own default max_sequence_length
DEFAULT_MAX_LENGTH = {"StableDiffusion3Pipeline": 256, "FluxPipeline": 512, "QwenImagePipeline": 512}


def encoder_device() -> torch.device:
    """Where the text encoders run (in bfloat16 on a GPU): once per prompt set, then freed."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PipelinePromptEncoder:
    """``encode(prompts) -> Condition``: one row per prompt, from the pipeline's ``encode_prompt``.

    Args:
        directory: the teacher's pipeline directory.
        transformer_class: the class name of its transformer (picks the pipeline).
        max_sequence_length: T5 / Qwen tokens per prompt; None: the pipeline's default.
    """

    def __init__(self, directory: str | Path, transformer_class: str, max_sequence_length: int | None = None):
        if transformer_class not in TEXT_TRANSFORMERS:
            raise TeacherCheckpointError(
                f"{transformer_class} has no prompt encoder here; supported: {sorted(TEXT_TRANSFORMERS)}"
            )
        self.pipeline_name, self.keys = TEXT_TRANSFORMERS[transformer_class]
        self.directory = Path(directory)
        self.max_length = int(max_sequence_length or DEFAULT_MAX_LENGTH[self.pipeline_name])
        self.device = encoder_device()
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32  # a 7B Qwen2.5-VL in fp32: 28 GB
        try:
            self.pipe = (
                getattr(diffusers, self.pipeline_name)
                .from_pretrained(
                    self.directory, transformer=None, vae=None, dtype=dtype, use_safetensors=True, local_files_only=True
                )
                .to(self.device)
            )
        except (OSError, ValueError, TypeError) as err:
            raise TeacherCheckpointError(
                f"cannot load the text encoders of {self.directory} as a {self.pipeline_name} ({err}): the "
                "directory needs model_index.json, text_encoder*/ (safetensors) and tokenizer*/"
            ) from err

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 16) -> Condition:
        parts = [self._encode_batch(list(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)]
        return {key: torch.cat([p[key] for p in parts]) for key in self.keys}

    def _encode_batch(self, prompts: list[str]) -> Condition:
        pipe, n = self.pipe, self.max_length
        if self.pipeline_name == "StableDiffusion3Pipeline":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, None, None, device=self.device, do_classifier_free_guidance=False, max_sequence_length=n
            )
            return {PROMPTS: embeds.float().cpu(), POOLED: pooled.float().cpu()}
        if self.pipeline_name == "FluxPipeline":
            embeds, pooled, _ = pipe.encode_prompt(prompts, device=self.device, max_sequence_length=n)
            return {PROMPTS: embeds.float().cpu(), POOLED: pooled.float().cpu()}
        embeds, mask = pipe.encode_prompt(prompts, device=self.device, max_sequence_length=n)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        # Rows padded to n tokens so that every batch (and shard) stacks; the mask hides the padding.
        pad = n - embeds.shape[1]
        embeds = torch.nn.functional.pad(embeds.float(), (0, 0, 0, pad))
        return {PROMPTS: embeds.cpu(), PROMPT_MASK: torch.nn.functional.pad(mask, (0, pad)).float().cpu()}

    def fingerprint(self) -> str:
        """Changes with the encoders' weights and the sequence length, not with where they live."""
        summary = [self.pipeline_name, self.max_length]
        for name, module in sorted(self.pipe.components.items()):
            if isinstance(module, torch.nn.Module):
                summary.append((name, type(module).__name__, *weight_summary(module)))
        return cache_key(repr(summary))


def condition_table(prompts: Sequence[str], encoder: PipelinePromptEncoder, cache_dir: str | Path | None) -> Condition:
    """The condition rows of ``prompts``, read from / written to ``cache_dir`` in shards (one folder per key)."""
    folder = None if cache_dir is None else Path(cache_dir) / table_key(encoder.fingerprint(), prompts)
    made: dict[tuple[int, int], Condition] = {}  # a shard is encoded once, whichever key asks first

    def part(name: str) -> Callable[[int, int], Tensor]:
        def make(start: int, stop: int) -> Tensor:
            if (start, stop) not in made:
                made[(start, stop)] = encoder.encode(prompts[start:stop])
            return made[(start, stop)][name]

        return make

    table = {
        name: cached_in_shards(None if folder is None else folder / name, len(prompts), SHARD_SIZE, "rows", part(name))
        for name in encoder.keys
    }
    return trim_padding(table)


def trim_padding(table: Condition) -> Condition:
    """A masked table cut to its longest prompt: the padding is masked out, so the output is the same."""
    if PROMPT_MASK not in table:
        return table
    length = max(int(table[PROMPT_MASK].sum(1).max()), 1)
    return {k: v[:, :length] for k, v in table.items()}
