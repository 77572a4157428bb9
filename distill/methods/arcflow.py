"""ArcFlow (Yang et al. 2026, arXiv 2602.09014; methods.md 8): few-step students on curved steps.

Each student step is one network call at ``(x_src, s_src)`` that outputs a mixture of K momentum
components; the step then follows the mixture's field in closed form (``distill.core.momentum``),
an arc rather than a straight chord. Training is trajectory imitation and needs no data: roll out
from noise over the student's own steps, visit a few random states inside each step, and pull the
student's average velocity over a short window at each state onto the teacher's velocity there.

Early in training part of every step is travelled with teacher Euler steps instead (the teacher's
share falls linearly from 1 to 0 over ``teacher_mix_steps``), so the first states are on the
teacher's path and later ones on the student's own (on-policy, no exposure bias). Rollouts are
detached and their policy drops components at random; only the call at ``x_src`` takes gradients.
ArcFlow trains LoRA adapters plus the new heads (``student=lora``, set by ``conf/method/arcflow.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.grids import shifted_grid
from distill.core.losses import per_sample_mse
from distill.core.momentum import Momentum, advance, average_velocity, drop_components
from distill.core.tensors import append_dims, batch_time
from distill.methods.base import Method, Renoise, check_counts
from distill.nets.freezing import trainable_fraction
from distill.students.momentum import MomentumStudent, momentum_student_from


class ArcFlow(Method):
    """Args:
    components: K momentum components per element (16 in the released configs).
    train_nfes: student step counts rolled out in training, cycled step by step (the paper: [2]).
    shift: SD3 time shift of the student's step grid, in training and sampling (the paper: 3.2).
    intermediate_states: random states visited inside each student step.
    window: length in FM time of the average-velocity window at each state (the paper: 3/128).
    teacher_mix_steps: steps over which the teacher's share of each rollout falls 1 -> 0;
        None: 1/15 of the budget (1k of the paper's 15k iterations).
    teacher_substeps: Euler steps of each teacher-travelled hop.
    component_dropout: probability of dropping a component from the rollout policy.
    loss_scale: constant factor on the loss (the paper: 30).
    bias_noise: std of the noise on the replicated output biases (symmetry breaking).
    """

    name = "arcflow"
    data_role = "shape"  # data-free: rollouts start from noise, the batch gives only size and condition
    fresh_parameters = ("means.*", "logits.*", "rates.*")

    def __init__(
        self,
        components: int = 16,
        train_nfes: Sequence[int] = (2,),
        shift: float = 1.0,
        intermediate_states: int = 4,
        window: float = 3 / 128,
        teacher_mix_steps: int | None = None,
        teacher_substeps: int = 2,
        component_dropout: float = 0.1,
        loss_scale: float = 1.0,
        bias_noise: float = 0.05,
    ):
        super().__init__()
        if not train_nfes or min(train_nfes) < 1:
            raise ValueError(f"method.train_nfes={list(train_nfes)} must be a non-empty list of step counts >= 1")
        check_counts(intermediate_states=intermediate_states, teacher_substeps=teacher_substeps)
        if not 0 <= component_dropout < 1:
            raise ValueError(f"method.component_dropout={component_dropout} must be in [0, 1)")
        if window <= 0 or shift <= 0:
            raise ValueError(f"method.window={window} and method.shift={shift} must be > 0")
        self.components, self.train_nfes, self.shift = components, list(train_nfes), shift
        self.intermediate_states, self.window = intermediate_states, window
        self.teacher_mix_steps, self.teacher_substeps = teacher_mix_steps, teacher_substeps
        self.component_dropout, self.loss_scale, self.bias_noise = component_dropout, loss_scale, bias_noise
        self.fraction = 1.0

    def set_budget(self, max_steps: int) -> None:
        if self.teacher_mix_steps is None:
            self.teacher_mix_steps = max(1, max_steps // 15)

    def prepare_student(self, student: nn.Module) -> nn.Module:
        return momentum_student_from(student, self.components, bias_noise=self.bias_noise)

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.fraction = trainable_fraction(student)  # after LoRA froze the body, if it did

    def teacher_share(self, step: int) -> float:
        mix = self.teacher_mix_steps or 1
        return max(0.0, 1.0 - step / mix)

    def grid(self, nfe: int, like: Tensor) -> Tensor:
        return shifted_grid(nfe, self.shift).to(like.device, like.dtype)

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if not isinstance(student, MomentumStudent):
            raise TypeError("ArcFlow trains a MomentumStudent: pass the student through prepare_student")
        nfe = self.train_nfes[step % len(self.train_nfes)]
        grid, share = self.grid(nfe, x0), self.teacher_share(step)
        x = torch.randn_like(x0)  # data-free: only the batch's shape and device are used
        total = x0.new_zeros(())
        for i in range(nfe):
            s_src, s_end = batch_time(grid[i], x), batch_time(grid[i + 1], x)
            policy = student.mixture(x, s_src)
            rollout = drop_components(policy.detach(), self.component_dropout)
            s_switch = s_src - share * (s_src - s_end)  # the teacher travels [s_switch, s_src]
            states, s_states = self.visit(x, s_src, s_end, s_switch, rollout, teacher)
            error = x0.new_zeros(x.shape[0])
            for x_j, s_j in zip(states, s_states, strict=True):
                with torch.no_grad():
                    target = teacher(x_j, s_j)
                window = torch.clamp(s_j - s_end, max=self.window)
                error = error + per_sample_mse(average_velocity(policy, s_src - s_j, window), target)
            # Steps weigh by their length, so the loss does not depend on how the path is cut.
            total = total + (s_src - s_end)[0] * error.mean() / len(states)
            x = self.hop(states[-1], s_states[-1], s_end, s_src, s_switch, rollout, teacher)
        return {"loss": self.loss_scale * total, "teacher_share": torch.tensor(share),
                "trainable_fraction": torch.tensor(self.fraction)}

    @torch.no_grad()
    def visit(self, x: Tensor, s_src: Tensor, s_end: Tensor, s_switch: Tensor, rollout: Momentum,
              teacher: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """``intermediate_states`` sorted random states of the step, reached hop by hop."""
        fractions = torch.rand(self.intermediate_states, x.shape[0], device=x.device, dtype=x.dtype).sort(dim=0).values
        states, times, s_at = [], [], s_src
        for fraction in fractions:
            s_next = s_src - fraction * (s_src - s_end)
            x = self.hop(x, s_at, s_next, s_src, s_switch, rollout, teacher)
            states.append(x)
            times.append(s_next)
            s_at = s_next
        return states, times

    @torch.no_grad()
    def hop(self, x: Tensor, s_a: Tensor, s_b: Tensor, s_src: Tensor, s_switch: Tensor, rollout: Momentum,
            teacher: nn.Module) -> Tensor:
        """From ``s_a`` to ``s_b``: teacher Euler above ``s_switch``, the detached student below."""
        s_mid = torch.minimum(torch.maximum(s_switch, s_b), s_a)
        if bool((s_mid < s_a).any()):
            h = (s_mid - s_a) / self.teacher_substeps
            s = s_a
            for _ in range(self.teacher_substeps):
                x = x + append_dims(h, x.ndim) * teacher(x, s)
                s = s + h
        return advance(x, rollout, s_src, s_mid, s_b)

    # --- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, student: nn.Module, noise: Tensor, nfe: int, renoise: Renoise | None = None) -> Tensor:
        """One call per step, then the step's arc in closed form to the next grid time."""
        x, grid = noise, self.grid(nfe, noise)
        for i in range(nfe):
            s, s_next = batch_time(grid[i], x), batch_time(grid[i + 1], x)
            x = advance(x, student.mixture(x, s), s, s, s_next)
        return x
