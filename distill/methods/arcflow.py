"""ArcFlow (Yang et al. 2026, arXiv 2602.09014; docs/methods.md 8): few-step students on curved steps.

Each student step is one network call at ``(x_src, s_src)`` that outputs a mixture of K momentum
components; the step then follows the mixture's field in closed form (``distill.core.momentum``),
an arc rather than a straight chord. Training is trajectory imitation and needs no data: roll out
from noise over the student's own steps, visit a few random states inside each step, and pull the
student's average velocity over a short window at each state onto the teacher's velocity there.

Early in training part of every step is travelled with teacher Euler hops instead, interleaved
with the student's moves (the teacher's share falls linearly from 1 to 0 over ``teacher_mix_steps``),
so the first states are near the teacher's path and later ones on the student's own (on-policy, no
exposure bias). Rollouts are detached and their policy drops components at random; only the call
at ``x_src`` takes gradients. As in the official code (pnotp/ArcFlow), the geometry lives in raw
time u (uniform steps, uniform state draws, a window of 3/128) and is warped to FM time by the shift
only where a network or the closed form reads it.
ArcFlow trains LoRA adapters plus the new heads (``student=lora``, set by ``conf/method/arcflow.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.grids import shifted_grid, uniform_grid
from distill.core.imitation import imitation_segment
from distill.core.momentum import MomentumPolicy, advance, drop_components
from distill.core.tensors import batch_time
from distill.core.time_sampling import shift_time
from distill.methods.base import Method, Renoise, check_counts
from distill.nets.freezing import trainable_fraction
from distill.students.momentum import MomentumStudent, momentum_student_from


class ArcFlow(Method):
    """Args:
    components: K momentum components per element (16 in the released configs).
    train_nfes: student step counts rolled out in training, cycled step by step (the paper: [2]).
    shift: SD3 time shift of the student's step grid, in training and sampling (the paper: 3.2).
    intermediate_states: random states visited inside each student step.
    window_substeps: the average-velocity window at each state, in raw-time substeps (the paper: 3).
    total_substeps: substeps of raw time [0, 1] that measure the window (the paper: 128; 3/128 at 2 NFE).
    teacher_mix_steps: steps over which the teacher's share of each rollout falls 1 -> 0;
        None: 1/15 of the budget (1k of the paper's 15k iterations).
    component_dropout: probability of dropping a component from a sample's rollout policy (for all its elements).
    loss_scale: constant factor on the loss (the paper: 30).
    bias_noise: std of the noise on the replicated output biases (symmetry breaking).
    rate_lr_scale: learning-rate multiplier of the rate head (the paper: 0.1, ``lr_mult`` on
        ``proj_out_loggamma``); other than 1 it needs ``optimizer_lr``.
    optimizer_lr: the optimizer's learning rate (``${method.optimizer.lr}``), scaled for the rate head.
    bias_noise_group: consecutive output units sharing one noise value (the paper: 4, one per latent
        channel of a FLUX / Qwen-Image 2x2 patch token; 1 for conv outputs, already per channel).
    """

    name = "arcflow"
    guidance_input = True  # the student learns guided teacher velocities alone (methods.md 13)
    data_role = "shape"  # data-free: rollouts start from noise, the batch gives only size and condition
    fresh_parameters = ("means.*", "logits.*", "rates.*")

    def __init__(
        self,
        components: int = 16,
        train_nfes: Sequence[int] = (2,),
        shift: float = 1.0,
        intermediate_states: int = 4,
        window_substeps: int = 3,
        total_substeps: int = 128,
        teacher_mix_steps: int | None = None,
        component_dropout: float = 0.1,
        loss_scale: float = 1.0,
        bias_noise: float = 0.05,
        bias_noise_group: int = 1,
        rate_lr_scale: float = 1.0,
        optimizer_lr: float | None = None,
    ):
        super().__init__()
        if not train_nfes or min(train_nfes) < 1:
            raise ConfigError(
                f"method.objective.train_nfes={list(train_nfes)} must be a non-empty list of step counts >= 1"
            )
        check_counts(intermediate_states=intermediate_states, total_substeps=total_substeps)
        if not 0 <= component_dropout < 1:
            raise ConfigError(f"method.objective.component_dropout={component_dropout} must be in [0, 1)")
        if window_substeps < 0 or shift <= 0:
            raise ConfigError(
                f"method.objective.window_substeps={window_substeps} must be >= 0 and "
                f"method.objective.shift={shift} > 0"
            )
        self.components, self.train_nfes, self.shift = components, list(train_nfes), shift
        self.intermediate_states, self.teacher_mix_steps = intermediate_states, teacher_mix_steps
        self.window_substeps, self.total_substeps = window_substeps, total_substeps
        self.component_dropout, self.loss_scale, self.bias_noise = component_dropout, loss_scale, bias_noise
        if rate_lr_scale <= 0 or (rate_lr_scale != 1 and optimizer_lr is None):
            raise ConfigError(
                f"method.objective.rate_lr_scale={rate_lr_scale} must be > 0 and, other than 1, needs "
                "method.objective.optimizer_lr (set it to ${method.optimizer.lr})"
            )
        self.bias_noise_group, self.rate_lr_scale, self.optimizer_lr = bias_noise_group, rate_lr_scale, optimizer_lr
        self.fraction = 1.0

    def set_budget(self, max_steps: int) -> None:
        if self.teacher_mix_steps is None:
            self.teacher_mix_steps = max(1, max_steps // 15)

    def prepare_student(self, student: nn.Module) -> nn.Module:
        return momentum_student_from(
            student, self.components, bias_noise=self.bias_noise, bias_noise_group=self.bias_noise_group
        )

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.fraction = trainable_fraction(student)  # after LoRA froze the body, if it did

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter] | list[dict]:
        """All trainable parameters; with ``rate_lr_scale`` != 1, two optimizer groups, the rate head's
        at ``optimizer_lr * rate_lr_scale`` (pnotp/ArcFlow configs/qwen/_ddp_train.py paramwise_cfg)."""
        params = [p for p in student.parameters() if p.requires_grad]
        if self.rate_lr_scale == 1:
            return params
        heads = [m for m in student.modules() if isinstance(m, MomentumStudent)]
        rate_ids = {id(p) for m in heads for p in m.rates.parameters()}
        return [
            {"params": [p for p in params if id(p) not in rate_ids]},
            {"params": [p for p in params if id(p) in rate_ids], "lr": self.optimizer_lr * self.rate_lr_scale},
        ]

    def teacher_share(self, step: int) -> float:
        mix = self.teacher_mix_steps or 1
        return max(0.0, 1.0 - step / mix)

    def grid(self, nfe: int, like: Tensor) -> Tensor:
        return shifted_grid(nfe, self.shift).to(like.device, like.dtype)

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        """One data-free rollout over the student's steps, as ``ArcFlowImitationDataFree``
        (pnotp/ArcFlow lakonlab/models/diffusions/arcflow.py:339-420): steps are uniform in raw time
        u and warped to FM time by the shift; each step's loss weighs by its raw length."""
        if not isinstance(student, MomentumStudent):
            raise TypeError("ArcFlow trains a MomentumStudent: pass the student through prepare_student")
        nfe = self.train_nfes[step % len(self.train_nfes)]
        share = self.teacher_share(step)
        raw = uniform_grid(nfe).tolist()
        x = torch.randn_like(x0)  # data-free: only the batch's shape and device are used
        total = x0.new_zeros(())
        for i in range(nfe):
            error, x = self.segment(x, raw[i], raw[i] - raw[i + 1], share, student, teacher)
            total = total + (raw[i] - raw[i + 1]) * error  # equal raw steps count equally
        return {
            "loss": self.loss_scale * 0.5 * total,  # DiffusionMSELoss halves the mean squared error
            "teacher_share": torch.tensor(share),
            "trainable_fraction": torch.tensor(self.fraction),
        }

    def warp(self, u: Tensor) -> Tensor:
        """Raw time u -> the FM time (sigma) the networks see: the SD3 shift."""
        return shift_time(u, self.shift)

    def segment(
        self, x: Tensor, u_src: float, length: float, share: float, student: MomentumStudent, teacher: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """One student step from raw time ``u_src`` over raw ``length`` (``piid_segment_momentum``,
        arcflow.py:120-209): the shared imitation step (``distill.core.imitation``) with the momentum
        mixture as the policy. Returns the mean squared error over its states and the detached end state.
        """
        s_src = self.warp(batch_time(u_src, x))
        mixture = student.mixture(x, s_src)
        policy = MomentumPolicy(mixture, s_src, self.warp)
        rollout = MomentumPolicy(drop_components(mixture.detach(), self.component_dropout), s_src, self.warp)
        error, x_end = imitation_segment(
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
        return error.mean(), x_end

    # --- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """One call per step, then the step's arc in closed form to the next grid time."""
        x, grid = noise, self.grid(nfe, noise)
        for i in range(nfe):
            s, s_next = batch_time(grid[i], x), batch_time(grid[i + 1], x)
            x = advance(x, student.mixture(x, s), s, s, s_next)
        return x
