"""A tiny text-conditional diffusers pipeline (UNet with cross-attention, CLIP text encoder, a
word-level tokenizer), written here and loaded back: captions are encoded once into a cached
table, each batch's prompts reach the networks, CFG uses the empty prompt, and it distils end to
end with a trajectory and a distribution method, full and as LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.build import build_datamodule, build_teacher
from distill.core.conditioning import PROMPTS, conditioned
from distill.errors import ConfigError
from distill.evaluation.results import MEMORY_METRICS
from distill.train import train
from tests.helpers.text_pipeline import captioned_images, captioned_run, save_text_pipeline


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return save_text_pipeline(root / "pipe"), captioned_images(root / "images")


def overrides(text_setup) -> list[str]:
    return captioned_run(*text_setup)


def test_captions_become_a_cached_prompt_table_and_guidance_uses_the_empty_prompt(compose_train, text_setup):
    cfg = compose_train(*overrides(text_setup), "teacher.guidance=3.0")
    dm = build_datamodule(cfg)
    teacher = build_teacher(cfg, dm)
    assert teacher.prompt_table.shape == (8, 6, 8) and teacher.null_condition[PROMPTS].shape == (1, 6, 8)
    assert torch.equal(teacher.prompt_table[0], teacher.prompt_table[4])  # same caption, same row values
    cached = list((Path(cfg.paths.cache) / "prompt_embeds").rglob("*.safetensors"))
    assert cached and torch.equal(build_teacher(cfg, dm).prompt_table, teacher.prompt_table)  # read back
    x, s = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    prompts = {PROMPTS: teacher.prompt_table[:2]}
    with torch.no_grad(), conditioned(prompts):
        cond = teacher.model(x, s)
        guided = teacher(x, s)
    uncond = teacher.model(x, s)  # no condition: the empty prompt
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond, uncond)


@pytest.mark.parametrize(
    ("method", "student"),
    [
        ("progressive", "copy_of_teacher"),
        ("dmd2", "lora"),
        pytest.param("progressive", "lora", marks=pytest.mark.slow),
        pytest.param("dmd2", "copy_of_teacher", marks=pytest.mark.slow),
    ],
)
def test_text_teacher_distils_end_to_end(compose_train, text_setup, method, student):
    cfg = compose_train(
        f"method={method}", f"student={student}", "debug=fast", *overrides(text_setup), "teacher.guidance=2.0"
    )
    train(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert {r["nfe"] for r in rows if r["model"] == "student" and r["metric"] not in MEMORY_METRICS} == {1, 2, 4}


def test_a_text_teacher_needs_captions(compose_train, text_setup):
    cfg = compose_train(*[o for o in overrides(text_setup) if o != "dataset.captions=true"])
    with pytest.raises(ConfigError, match="text-conditional: train on captioned images"):
        build_teacher(cfg, build_datamodule(cfg))
