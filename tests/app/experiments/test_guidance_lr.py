"""experiments/guidance_lr.py: how much of the teacher's w-dependence a guidance-input copy learns."""

from __future__ import annotations

import re

import pytest

from distill.data import DataModule
from tests.conftest import TINY_UNET, train_tiny_teacher
from tests.helpers.experiments import load_experiment


def test_an_untrained_copy_ignores_w_and_a_faster_embedding_learns_more_of_it(tmp_path, capsys) -> None:
    dm = DataModule(name="digits", batch_size=64)
    dm.setup()
    teacher = train_tiny_teacher(tmp_path / "teacher", dm.train_tensor(), {**TINY_UNET, "num_classes": 10}, steps=5)
    script = load_experiment("guidance_lr")
    script.main([f"teacher={teacher}", "dataset=digits", "steps=0,5", "scales=1,100", "lr=1e-3", "batch=16"])
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d., ]+) \| ([\d., ]+) \|$", capsys.readouterr().out, re.M)
    table = {(int(steps), float(scale)): [float(v) for v in first.split(", ")] for steps, scale, first, _ in rows}
    assert set(table) == {(0, 1.0), (0, 100.0), (5, 1.0), (5, 100.0)}
    share, mse_w1, mse_w4 = table[0, 1.0]
    assert share == 0 and mse_w1 == 0 and mse_w4 > 0  # the copy is the conditional teacher at every w
    assert table[5, 100.0][0] > 2 * table[5, 1.0][0]
    with pytest.raises(SystemExit, match="not class-conditional"):
        plain = train_tiny_teacher(tmp_path / "plain", dm.train_tensor(), TINY_UNET, steps=1)
        script.main([f"teacher={plain}", "dataset=digits", "steps=0", "scales=1"])
