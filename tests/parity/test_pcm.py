"""Parity: PCM (``distill.methods.PhasedConsistency``) against G-U-N/Phased-Consistency-Model, restated here.

From ``G-U-N/Phased-Consistency-Model`` @ b127277 ``code/text_to_image_sd15/train_pcm_lora_sd15.py``:
``DDIMSolver`` (``:289-343``: the DDIM timesteps, ``ddim_step`` and ``ddim_style_multiphase_pred``),
the boundary scalings (``:251-259``), ``predicted_origin`` (``:268-280``) and the training step
(``:1140-1281``: index law, noising, the online student's multiphase prediction, the teacher's DDIM
step, the online target under no_grad with c_skip = 1 on phase edges, the element-wise
pseudo-Huber). The teacher step is taken without CFG (the script's ``--not_apply_cfg_solver``
path, where uncond = cond); the project's guidance lives in the teacher and is tested with it.
Both sides run on SD1.5's scaled-linear schedule with eps-predicting networks. Float64, tiny inputs.
"""

import torch
from torch import nn

from distill.core.adapt import to_velocity_model
from distill.core.process import VPDiscrete
from distill.methods.pcm import PhasedConsistency

F64 = torch.float64
T, N, TOPK = 1000, 50, 20  # num_train_timesteps, num_ddim_timesteps, T // N
HUBER_C = 1e-3


def eps_net(weight: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps-predicting network (B, D) on native states and (fractional) timesteps t (B,)."""
    return torch.tanh(x @ weight + (t / T)[:, None]) + 0.1 * x


class VPVelocity(nn.Module):
    """The project's view of ``eps_net`` on the discrete schedule: a velocity model in FM coordinates."""

    def __init__(self, weight: torch.Tensor, process: VPDiscrete, trainable: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=trainable)
        self.process = process

    def forward(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return to_velocity_model(lambda x, t: eps_net(self.weight, x, t), self.process, "eps")(x_s, s)


def official_pcm_loss(latents, student_w, teacher_w, alphas_cumprod, phases, seed):
    torch.manual_seed(seed)
    alpha_schedule, sigma_schedule = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    # DDIMSolver.__init__, :291-301
    ddim_timesteps = torch.arange(1, N + 1) * (T // N) - 1
    ddim_alpha_cumprods_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[ddim_timesteps[:-1]]])
    ddim_timesteps_prev = torch.cat([torch.zeros(1, dtype=torch.long), ddim_timesteps[:-1]])
    assert ddim_timesteps_prev[0] == 0

    def predicted_origin(eps, timesteps, sample):  # :268-280, epsilon
        return (sample - sigma_schedule[timesteps][:, None] * eps) / alpha_schedule[timesteps][:, None]

    def ddim_step(pred_x0, pred_noise, index):  # :318-325
        a_prev = ddim_alpha_cumprods_prev[index][:, None]
        return a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * pred_noise

    inference_indices = torch.floor(torch.linspace(0, N, phases + 1, dtype=F64)[:-1]).long()  # linspace(endpoint=False)

    def multiphase_pred(pred_x0, pred_noise, index):  # ddim_style_multiphase_pred, :327-343
        valid = index[:, None] >= inference_indices[None, :]
        last_valid = inference_indices.numel() - 1 - valid.flip(dims=[1]).long().argmax(dim=1)
        return ddim_step(pred_x0, pred_noise, inference_indices[last_valid])

    # The project draws n in 1..N, then the noise; the index law (uniform on 0..N-1, :1147-1149) is the same.
    index = torch.randint(1, N + 1, (latents.shape[0],)) - 1
    noise = torch.randn_like(latents)
    start_timesteps = ddim_timesteps[index]  # :1151
    timesteps = torch.clamp(start_timesteps - TOPK, min=0)  # :1152-1155
    c_skip = torch.isin(index, inference_indices).to(F64)[:, None]  # scalings_for_boundary_conditions_target
    c_out = 1 - c_skip
    noisy = alpha_schedule[start_timesteps][:, None] * latents + sigma_schedule[start_timesteps][:, None] * noise
    noise_pred = eps_net(student_w, noisy, start_timesteps.to(F64))  # :1191-1197
    model_pred = multiphase_pred(
        predicted_origin(noise_pred, start_timesteps, noisy), noise_pred, index
    )  # c_skip_start 0
    with torch.no_grad():
        teacher_out = eps_net(teacher_w, noisy, start_timesteps.to(F64))  # :1215-1230, no CFG
        x_prev = ddim_step(predicted_origin(teacher_out, start_timesteps, noisy), teacher_out, index)  # :1254
        target_noise_pred = eps_net(student_w, x_prev, timesteps.to(F64))  # :1258-1265, the online unet
        target = multiphase_pred(predicted_origin(target_noise_pred, timesteps, x_prev), target_noise_pred, index)
        target = c_skip * x_prev + c_out * target  # :1279
    return torch.mean(torch.sqrt((model_pred - target) ** 2 + HUBER_C**2) - HUBER_C)  # :1287-1293


def test_pcm_loss_and_gradient_equal_the_sd15_scripts_on_the_ddim_grid():
    process = VPDiscrete(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    torch.manual_seed(0)
    dim, batch = 6, 64
    x0 = torch.randn(batch, dim, dtype=F64)
    teacher_w, student_w = 0.4 * torch.randn(dim, dim, dtype=F64), 0.4 * torch.randn(dim, dim, dtype=F64)
    teacher, student = VPVelocity(teacher_w, process, False), VPVelocity(student_w, process, True)
    method = PhasedConsistency(
        phases=4, num_euler_timesteps=N, grid="ddim", target="online", loss="huber", huber_c=HUBER_C
    )
    method.attach(teacher, student)
    torch.manual_seed(1)
    ours = method.loss("student", x0, teacher, student, 0)["loss"]
    ours.backward()

    w = student_w.clone().requires_grad_(True)
    theirs = official_pcm_loss(x0, w, teacher_w, process.alphas_cumprod, phases=4, seed=1)
    (grad,) = torch.autograd.grad(theirs, w)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(student.weight.grad, grad, rtol=1e-7, atol=1e-12)
