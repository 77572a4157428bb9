"""SLURM requeueing: the hardware config wires the environment, the callback calls scontrol."""

from __future__ import annotations

import os

from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment

from distill.callbacks.preemption import requeue_slurm_job, slurm_job_id
from tests.conftest import compose_config


def test_job_ids_as_scontrol_takes_them():
    assert slurm_job_id({"SLURM_JOB_ID": "123"}) == "123"
    assert slurm_job_id({"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "7"}) == "123_7"
    assert slurm_job_id({}) is None


def test_requeue_calls_scontrol(tmp_path, monkeypatch):
    log, scontrol = tmp_path / "calls", tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert requeue_slurm_job({"SLURM_JOB_ID": "42"})
    assert log.read_text() == "requeue 42\n"
    assert not requeue_slurm_job({})  # not a SLURM job: nothing to requeue


def test_hardware_slurm_wires_lightnings_auto_requeue_environment(tmp_path):
    plugins = instantiate(compose_config("train", ["hardware=slurm"], tmp_path).hardware.plugins)
    assert len(plugins) == 1 and isinstance(plugins[0], SLURMEnvironment) and plugins[0].auto_requeue
