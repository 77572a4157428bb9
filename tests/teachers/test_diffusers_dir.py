"""Teachers from local diffusers directories: the parameterization read from the scheduler config,
checked against the raw network through diffusers' own schedule tables; every bad layout named."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    DDPMScheduler,
)

from distill.teachers import TeacherCheckpointError
from distill.teachers.diffusers_dir import load_diffusers_teacher
from tests.helpers.diffusers_models import save_flow_model, save_pipeline, tiny_unet
from tests.helpers.text_pipeline import tiny_text_unet


def vp_state(timestep: int) -> tuple[float, float, float]:
    """(alpha, sigma, FM time) of a DDPM timestep, from diffusers' own alphas_cumprod."""
    acp = DDPMScheduler().alphas_cumprod[timestep].double()
    alpha, sigma = acp.sqrt().item(), (1 - acp).sqrt().item()
    return alpha, sigma, sigma / (alpha + sigma)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_teacher_matches_the_raw_network(tmp_path, prediction):
    unet = save_pipeline(tmp_path / "pipe", prediction)
    teacher = load_diffusers_teacher(tmp_path / "pipe")
    assert teacher.data_shape == (1, 8, 8) and teacher.meta["prediction"] == {"epsilon": "eps"}.get(prediction, "v")
    alpha, sigma, s = vp_state(600)
    x_s = torch.randn(3, 1, 8, 8)
    x_t = x_s * (alpha + sigma)
    with torch.no_grad():
        raw = unet(x_t, torch.full((3,), 600.0)).sample
        s_batch = torch.full((3,), s)
        if prediction == "epsilon":
            torch.testing.assert_close(teacher.eps(x_s, s_batch), raw, rtol=1e-4, atol=1e-4)
        else:  # v = alpha eps - sigma x0  ->  x0 = alpha x_t - sigma v
            torch.testing.assert_close(teacher.x0(x_s, s_batch), alpha * x_t - sigma * raw, rtol=1e-4, atol=1e-4)


def test_flow_teacher_is_the_network_at_1000_sigma(tmp_path):
    unet = save_flow_model(tmp_path / "flow")
    teacher = load_diffusers_teacher(tmp_path / "flow")
    assert teacher.meta["prediction"] == "flow" and teacher.meta["shift"] == 3.0
    x, s = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, s), unet(x, 1000 * s).sample)


def test_bad_directories_name_the_problem(tmp_path):
    with pytest.raises(TeacherCheckpointError, match="does not exist"):
        load_diffusers_teacher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherCheckpointError, match="neither model_index.json nor config.json"):
        load_diffusers_teacher(tmp_path / "empty")
    tiny_unet().save_pretrained(tmp_path / "bare")
    with pytest.raises(TeacherCheckpointError, match="no scheduler_config.json"):
        load_diffusers_teacher(tmp_path / "bare")
    save_flow_model(tmp_path / "noweights")
    (tmp_path / "noweights" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(TeacherCheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_diffusers_teacher(tmp_path / "noweights")
    config = tmp_path / "flow" / "config.json"
    save_flow_model(tmp_path / "flow")
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "os.system"}))
    with pytest.raises(TeacherCheckpointError, match="not a diffusers model class"):
        load_diffusers_teacher(tmp_path / "flow")


def test_text_conditional_teachers_need_their_text_encoder(tmp_path):
    torch.manual_seed(0)
    tiny_text_unet(8, 1).save_pretrained(tmp_path / "cond")
    DDPMScheduler().save_pretrained(tmp_path / "cond")
    with pytest.raises(TeacherCheckpointError, match="needs text_encoder/ and tokenizer/"):
        load_diffusers_teacher(tmp_path / "cond")
