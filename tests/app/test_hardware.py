"""Hardware configs compose into what the launchers need; the SLURM one into a real sbatch script."""

import shutil

import pytest
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

submitit = pytest.importorskip("submitit")  # hydra-submitit-launcher's dependency (the dev extra)


@pytest.mark.parametrize(
    ("hardware", "devices", "precision"),
    [
        ("cpu", 1, "32-true"),
        ("ddp_sim", 2, "32-true"),
        ("gpu", 1, "bf16-mixed"),
        ("8xa100_ddp", 8, "bf16-mixed"),
        ("8xa100_fsdp", 8, "bf16-mixed"),
        ("slurm_multinode", 8, "bf16-mixed"),
    ],
)
def test_precision_is_bf16_mixed_on_gpus_and_32_on_cpus(compose_train, hardware, devices, precision):
    hw = compose_train(f"hardware={hardware}").hardware
    assert (hw.devices, hw.precision) == (devices, precision)


def sbatch_script(cfg, folder) -> str:
    """The script submitit would hand to sbatch for ``cfg.hydra.launcher`` (as the launcher builds it)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_"), params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=folder, slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m distill.train", "job")


def test_slurm_multinode_submits_one_task_per_gpu_and_signals_the_preemption_handler(
    compose_train, tmp_path, monkeypatch
):
    cfg = compose_train("hardware=slurm_multinode", "hardware.num_nodes=4", "hydra.launcher.partition=gpu")
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")  # no SLURM here
    script = sbatch_script(cfg, tmp_path)
    for line in (
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--partition=gpu",
        "--signal=USR1@120",
    ):  # SIGUSR1: distill.callbacks.preemption's, which finishes the batch first
        assert f"#SBATCH {line}\n" in script
    (plugin,) = instantiate(cfg.hardware.plugins)
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue  # the preempted job requeues itself
    assert cfg.hardware.strategy == compose_train("hardware=8xa100_ddp").hardware.strategy
