"""pi-Flow (Chen et al. 2025, arXiv 2510.14974; docs/methods.md 8.1): few-step students that output policies.

Each student step is one network call at ``(x_src, s_src)`` that outputs a *policy*: a GMFlow mixture
over the denoised image (K Gaussians) or a DX grid of denoised images over the step's time. The step
then integrates the policy's velocity in many Euler substeps with no further network call
(``distill.core.policies``). Training is policy imitation distillation (pi-ID), the step ArcFlow
shares (``distill.core.imitation``): visit a few random states along the policy's own trajectory
inside a step and pull the policy's (window-mean) velocity there onto the teacher's.

``data_free`` (the default) rolls every training sample out from noise over all the student's steps,
as ``PiFlowImitationDataFree``; otherwise one random step per sample starts from a data image noised
to its source time, as ``PiFlowImitation`` (the ImageNet recipes). Rollouts are detached and a GMFlow
rollout drops components at random; only the call at ``x_src`` takes gradients. The FLUX.1 / Qwen-Image
recipes train LoRA adapters plus the new heads (``student=lora``, set by ``conf/method/piflow.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.imitation import imitation_segment
from distill.core.policies import DXPolicy, GMFlowPolicy, SubstepPolicy, gm_from_velocity
from distill.core.tensors import append_dims, batch_time
from distill.core.time_sampling import shift_time
from distill.methods.base import Method, Renoise, check_choice, check_counts
from distill.nets.freezing import trainable_fraction
from distill.students.policy import DXStudent, GMFlowStudent

POLICIES = ("gmflow", "dx")
DX_MODES = ("grid", "polynomial")
EPS = 1e-4  # train_cfg / test_cfg eps


def step_lengths(nfe: int, final_step_scale: float) -> list[float]:
    """Raw-time lengths of the student's steps: equal, the last scaled by ``final_step_scale``
    (``base_segment_size = 1 / (nfe - 1 + final_step_size_scale)``, piflow.py)."""
    base = 1 / (nfe - 1 + final_step_scale)
    return [base] * (nfe - 1) + [base * final_step_scale]


def drop_gm_components(logweights: Tensor, p: float) -> Tensor:
    """GMFlow's rollout dropout (``GMFlowPolicy.dropout_``, piflow_policies/gmflow.py): each sample
    drops each component with probability ``p`` everywhere (a sample that would drop all keeps all);
    dropped log-weights become -inf, so the survivors renormalise in the softmax."""
    if p <= 0 or p >= 1:
        return logweights
    batch, k = logweights.shape[:2]
    drop = torch.rand((batch, k), device=logweights.device) < p
    drop &= ~drop.all(dim=1, keepdim=True)
    return logweights.masked_fill(drop.view(batch, k, *[1] * (logweights.ndim - 2)), float("-inf"))


class PiFlow(Method):
    """Args:
    policy: ``gmflow`` (K Gaussians over x0) or ``dx`` (a grid of x0 over the step).
    components: K Gaussians of a GMFlow policy (ImageNet: 32; FLUX.1 / Qwen-Image: 8).
    grid_points: N points of a DX policy (FLUX.1 / Qwen-Image: 10).
    dx_mode: ``grid`` (linear interpolation) or ``polynomial``.
    train_nfes: student step counts trained, cycled step by step (ImageNet: 1 or 2; FLUX.1: 4).
    final_step_scale: the last step's raw length relative to the others (ImageNet 1; FLUX.1 0.5).
    shift: SD3 time shift of raw time, in training and sampling (ImageNet 1; FLUX.1 3.2).
    data_free: roll out from noise over all steps (True), or start one random step per sample from
        noised data (False).
    intermediate_states: random states visited inside each step (ImageNet 2; FLUX.1 4).
    window_substeps: the mean-velocity window, in raw-time substeps (ImageNet 0: the local velocity; FLUX.1 3).
    total_substeps: Euler substeps of raw time [0, 1] that integrate a policy (128).
    teacher_mix_steps: steps over which the teacher's share of each step falls 1 -> 0 (ImageNet 0:
        none; FLUX.1 2000 of 3000); None: 2/3 of the budget.
    component_dropout: probability of dropping a Gaussian from a sample's rollout policy (ImageNet 0.05).
    loss_scale: constant factor on the loss (ImageNet 3; FLUX.1 30).
    bias_noise: std of the noise on the replicated output biases of the GMFlow means.
    bias_noise_group: consecutive output units sharing one noise value (4 for FLUX.1 / Qwen-Image tokens).
    logstd_width: hidden width of the GMFlow log-std head.
    """

    name = "piflow"
    fresh_parameters = ("means.*", "logits.*", "logstds.*", "grid.*")

    def __init__(
        self,
        policy: str = "gmflow",
        components: int = 32,
        grid_points: int = 10,
        dx_mode: str = "grid",
        train_nfes: Sequence[int] = (2,),
        final_step_scale: float = 1.0,
        shift: float = 1.0,
        data_free: bool = True,
        intermediate_states: int = 2,
        window_substeps: int = 0,
        total_substeps: int = 128,
        teacher_mix_steps: int | None = 0,
        component_dropout: float = 0.05,
        loss_scale: float = 3.0,
        bias_noise: float = 0.05,
        bias_noise_group: int = 1,
        logstd_width: int = 256,
    ):
        super().__init__()
        check_choice("policy", policy, POLICIES)
        check_choice("dx_mode", dx_mode, DX_MODES)
        if not train_nfes or min(train_nfes) < 1:
            raise ConfigError(
                f"method.objective.train_nfes={list(train_nfes)} must be a non-empty list of step counts >= 1"
            )
        check_counts(intermediate_states=intermediate_states, total_substeps=total_substeps)
        if not 0 < final_step_scale <= 1 or shift <= 0 or window_substeps < 0:
            raise ConfigError(
                f"method.objective.final_step_scale={final_step_scale} must be in (0, 1], "
                f"method.objective.shift={shift} > 0 and method.objective.window_substeps={window_substeps} >= 0"
            )
        if not 0 <= component_dropout < 1:
            raise ConfigError(f"method.objective.component_dropout={component_dropout} must be in [0, 1)")
        self.policy, self.components, self.grid_points, self.dx_mode = policy, components, grid_points, dx_mode
        self.train_nfes, self.final_step_scale, self.shift = list(train_nfes), final_step_scale, shift
        self.data_free, self.intermediate_states = data_free, intermediate_states
        self.window_substeps, self.total_substeps = window_substeps, total_substeps
        self.teacher_mix_steps, self.component_dropout, self.loss_scale = (
            teacher_mix_steps,
            component_dropout,
            loss_scale,
        )
        self.bias_noise, self.bias_noise_group, self.logstd_width = bias_noise, bias_noise_group, logstd_width
        # data-free rollouts read only the batch's shape; the other variant noises data images
        self.data_role = "shape" if data_free else "marginal"
        # a DX grid spans one training step of raw time, whatever NFE samples later (dx.py's note)
        self.dx_segment = step_lengths(self.train_nfes[0], final_step_scale)[0]
        self.fraction = 1.0

    def set_budget(self, max_steps: int) -> None:
        if self.teacher_mix_steps is None:
            self.teacher_mix_steps = max(1, 2 * max_steps // 3)

    def prepare_student(self, student: nn.Module) -> nn.Module:
        if isinstance(student, GMFlowStudent | DXStudent):  # a checkpoint reload
            return student
        if self.policy == "dx":
            return DXStudent(student, self.grid_points, self.dx_mode)
        return GMFlowStudent(
            student, self.components, self.bias_noise, self.bias_noise_group, logstd_width=self.logstd_width
        )

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.fraction = trainable_fraction(student)  # after LoRA froze the body, if it did

    def teacher_share(self, step: int) -> float:
        if not self.teacher_mix_steps:
            return 0.0
        return max(0.0, 1.0 - step / self.teacher_mix_steps)

    def warp(self, u: Tensor) -> Tensor:
        """Raw time u -> the FM time (sigma) the networks see: the SD3 shift."""
        return shift_time(u, self.shift)

    def policy_at(self, student: nn.Module, x: Tensor, u_src: Tensor) -> tuple[SubstepPolicy, SubstepPolicy]:
        """One student call at ``(x, u_src)``: its policy (with gradients) and the detached rollout
        policy (GMFlow: with component dropout)."""
        s_src = self.warp(u_src)
        common = {"x_src": x, "s_src": s_src, "warp": self.warp, "total_substeps": self.total_substeps}
        if isinstance(student, DXStudent):
            x0 = x.unsqueeze(1) - append_dims(s_src, x.ndim + 1) * student.grid_output(x, s_src)  # dx.py _u_to_x_0
            dx = {"u_src": u_src, "segment": self.dx_segment, "mode": student.mode, "eps": EPS, "mean_eps": EPS}
            return DXPolicy(**common, **dx, grid=x0), DXPolicy(**common, **dx, grid=x0.detach())
        if not isinstance(student, GMFlowStudent):
            raise TypeError("pi-Flow trains a GMFlowStudent or DXStudent: pass the student through prepare_student")
        means, logweights, logstds = student.gm_output(x, s_src)
        mixture = gm_from_velocity(means, append_dims(logstds, means.ndim), logweights, x, s_src)
        rollout = mixture.detach()
        rollout.logweights = drop_gm_components(rollout.logweights, self.component_dropout)
        return GMFlowPolicy(**common, mixture=mixture), GMFlowPolicy(**common, mixture=rollout)

    def segment(
        self, x: Tensor, u_src: Tensor, length: Tensor, share: float, student: nn.Module, teacher: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """One student step: the shared imitation step with this step's policy. Returns the per-sample
        error (B,) and the detached end state."""
        policy, rollout = self.policy_at(student, x, u_src)
        return imitation_segment(
            x,
            u_src,
            length,
            share,
            policy,
            rollout,
            teacher,
            self.warp,
            self.intermediate_states,
            self.window_substeps,
            self.total_substeps,
        )

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        nfe = self.train_nfes[step % len(self.train_nfes)]
        share = self.teacher_share(step)
        if self.data_free:
            loss = self.rollout_loss(x0, teacher, student, nfe, share)
        else:
            loss = self.one_step_loss(x0, teacher, student, nfe, share)
        return {
            "loss": self.loss_scale * 0.5 * loss,  # DiffusionMSELoss halves the mean squared error
            "teacher_share": torch.tensor(share),
            "trainable_fraction": torch.tensor(self.fraction),
        }

    def rollout_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module, nfe: int, share: float) -> Tensor:
        """Every step of a rollout from noise, each weighed by its raw length
        (``PiFlowImitationDataFree``, Lakonik/piFlow piflow.py)."""
        x, u = torch.randn_like(x0), 1.0  # data-free: only the batch's shape and device are used
        total = x0.new_zeros(())
        for length in step_lengths(nfe, self.final_step_scale):
            error, x = self.segment(x, batch_time(u, x), batch_time(length, x), share, student, teacher)
            total = total + length * error.mean()
            u -= length
        return total

    def one_step_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module, nfe: int, share: float) -> Tensor:
        """One random step per sample, started from the data noised to its source time
        (``PiFlowImitation.sample_t`` and ``forward_train``, Lakonik/piFlow piflow.py)."""
        u_src, length = self.sample_steps(x0.shape[0], nfe, x0)
        s_src = append_dims(self.warp(u_src), x0.ndim)
        x = (1 - s_src) * x0 + s_src * torch.randn_like(x0)
        error, _ = self.segment(x, u_src, length, share, student, teacher)
        return error.mean()

    def sample_steps(self, batch: int, nfe: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Each sample's step: a uniform raw time picks the step that contains it; returns the step's
        source raw time and raw length, (B,) each."""
        f = max(self.final_step_scale, EPS)
        base = 1 / (nfe - (1 - f))
        raw = (1 - torch.rand(batch, device=like.device)).to(like.dtype).clamp(min=EPS)  # ContinuousTimeStepSampler
        index = torch.ceil(raw / base + (1 - f)).clamp(min=1, max=nfe)
        u_src = ((index - (1 - f)) * base).clamp(min=EPS, max=1)
        length = torch.where(index == 1, torch.full_like(u_src, f * base), torch.full_like(u_src, base))
        return u_src, length

    # --- sampling ---------------------------------------------------------------------------
    def raw_times(self, nfe: int) -> list[float]:
        """Raw source times of the sampling steps, then 0 (``FlowMapSDEScheduler.set_timesteps`` with h = 0)."""
        lengths = step_lengths(nfe, self.final_step_scale)
        return [1.0 - sum(lengths[:i]) for i in range(nfe)] + [0.0]

    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """One call per step, then the step's policy in Euler substeps to the next grid time."""
        x, raw = noise, self.raw_times(nfe)
        for i in range(nfe):
            u_src, u_dst = batch_time(raw[i], x), batch_time(max(raw[i + 1], 0.0), x)
            policy, _ = self.policy_at(student, x, u_src)
            x = policy.advance(x, u_src, u_dst)
        return x
