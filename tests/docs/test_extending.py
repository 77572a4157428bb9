"""docs/extending.md's example method runs as written: its class and its YAML train on a toy set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import yaml

from distill.train import train
from tests.conftest import compose_config
from tests.docs.markdown import REPO, code_blocks

PAGE = REPO / "docs" / "extending.md"


def load_module(name: str, source: str, directory: Path) -> None:
    """Import ``source`` as module ``name`` (where the page tells the reader to save it)."""
    path = directory / f"{name.rsplit('.', 1)[-1]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def test_the_page_has_one_class_and_one_yaml():
    assert len(code_blocks(PAGE, "python")) == 1
    assert len(code_blocks(PAGE, "yaml")) == 1


def test_the_example_method_trains_and_samples_on_a_toy_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    (source,), (config,) = code_blocks(PAGE, "python"), code_blocks(PAGE, "yaml")
    method = yaml.safe_load(config)
    module, _ = method["objective"]["_target_"].rsplit(".", 1)
    monkeypatch.setitem(sys.modules, module, None)  # replaced below; undone after the test
    load_module(module, source, tmp_path)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / f"{method['name']}.yaml").write_text(config)
    cfg = compose_config(
        "train",
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            f"method={method['name']}",
            "dataset=gmm",
            "teacher=gmm_exact",
            "student=mlp",
            "logger=csv",
            "progress=false",
            "eval=fast",
            "eval.teacher=false",
            "eval.num_samples=100",
            "eval.num_reference=500",
            "train.max_steps=10",
            "train.batch_size=64",
        ],
        tmp_path / "run",
    )

    rows = train(cfg)

    scored = [r for r in rows if r.model == "student" and r.metric == "sw"]
    assert [r.nfe for r in scored] == [1], "supported_nfes keeps the 1-step row only"
    assert math.isfinite(scored[0].value) and scored[0].step == 10
    assert json.loads((tmp_path / "run" / "results.json").read_text())
