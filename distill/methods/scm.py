"""sCM: continuous-time consistency models in TrigFlow (Lu & Song 2024; docs/methods.md 4.1-4.5).

The student stays a canonical velocity model; ``distill.core.trigflow.trig_F`` reads it exactly
as a TrigFlow network F, whose consistency function ``cos t x_t - sin t sigma_d F`` is the FM
data estimate ``x_s - s v``. Each step pulls ``F_theta(x_t)`` towards ``F_theta^-(x_t) + g``,
where the tangent ``g`` (the normalised ``cos t df/dt`` along the PF-ODE) needs ``dF/dt`` from
one JVP. ``dx_t/dt`` comes from the teacher (sCD) or from the data pair (sCT).

Sampling is multistep consistency sampling from ``t_max = arctan(sigma_max / sigma_d)``: jump
to data, re-noise to the next time with fresh noise. TrigFlow and FM re-noising coincide
(``x_s = x_t / (cos t + sigma_d sin t)``), so it runs in FM coordinates like CD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.jvp import JVP_MODES, jvp
from distill.core.rng import capture_rng, restore_rng
from distill.core.tensors import append_dims
from distill.core.trigflow import fm_time, sample_trig_time, trig_F, trig_noise, trig_time
from distill.methods.base import FALLBACK_BUDGET, Method, SamplingPlan, check_choice

TANGENTS = ("teacher", "data")


def scm_tangent(
    F_sg: Tensor, cs_dFdt: Tensor, x_t: Tensor, dxdt: Tensor, t: Tensor, sigma_data: float, r: float
) -> Tensor:
    """``g = -cos^2 t (sigma_d F^- - dx_t/dt) - r (cos t sin t x_t + sigma_d cos t sin t dF^-/dt)``.

    At r = 1 this is ``cos t df^-/dt`` along the ODE (docs/methods.md 4.2). Computed in float64.

    Args:
        F_sg: (B, ...) stop-gradient F at (x_t / sigma_d, t).
        cs_dFdt: (B, ...) ``cos t sin t dF/dt`` (the JVP with pre-multiplied tangents).
        x_t: (B, ...) TrigFlow state; dxdt: (B, ...) its time derivative.
        t: (B,) TrigFlow times.
        r: tangent warm-up ratio in [0, 1].
    """
    t = append_dims(t.double(), x_t.ndim)
    ct, st = torch.cos(t), torch.sin(t)
    F_sg, cs_dFdt, x_t, dxdt = (v.double() for v in (F_sg, cs_dFdt, x_t, dxdt))
    return -(ct**2) * (sigma_data * F_sg - dxdt) - r * (ct * st * x_t + sigma_data * cs_dFdt)


def normalize_tangent(g: Tensor, c: float) -> Tensor:
    """``g / (||g|| + c)`` per sample: bounds the target's step whatever the JVP's scale."""
    norm = g.flatten(1).norm(dim=1)
    return g / append_dims(norm + c, g.ndim)


class AdaptiveWeight(nn.Module):
    """``w_phi(t)``: a learned log loss scale, trained through ``e^w mse - w`` (EDM2-style).

    Sinusoidal features of t (geometric frequencies 1..2^(n-1)) and one hidden layer; the output
    layer starts at zero, so training starts from the plain mse.
    """

    def __init__(self, num_frequencies: int = 8, width: int = 64):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False)
        self.net = nn.Sequential(nn.Linear(2 * num_frequencies, width), nn.SiLU(), nn.Linear(width, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) times -> (B,) log weights, float32."""
        args = t.float()[:, None] * self.freqs[None]
        return self.net(torch.cat([torch.cos(args), torch.sin(args)], dim=1))[:, 0]


class SCM(Method):
    """Continuous-time consistency distillation (sCD) or training (sCT).

    Args:
        tangent: ``teacher`` (sCD: ``dx_t/dt = sigma_d F_teacher``) or ``data`` (sCT:
            ``cos t z - sin t x0``; the teacher is unused, the student still starts from it).
        name: the sampler name on result rows (``scd`` / ``sct``).
        sigma_data: sigma_d of TrigFlow, in data units (0.5 for pixels in [-1, 1]).
        p_mean, p_std: proposal ``ln(sigma_d tan t) ~ N(p_mean, p_std^2)`` (CIFAR-10: -1.0, 1.4).
        tangent_warmup: H of ``r = min(1, step / H)``: steps if >= 1, else a fraction of the
            run's budget (``set_budget``); 0 disables the warm-up.
        tangent_norm: c of ``g / (||g|| + c)``.
        jvp: ``exact`` (forward-mode AD) or ``finite_difference``; either way only the tangent
            ``dF/dt`` comes from it: ``F^-`` is the gradient-carrying forward, detached.
        fd_step: central-difference step, in units of the tangent.
        sigma_max: first sampling time ``t_max = arctan(sigma_max / sigma_d)``.
        t_mid: the 2-step re-noising time (sCM: 1.1); None: ``multistep_times[0]``, i.e. the first
            ``nfe - 1`` of ``multistep_times`` at every NFE (rCM's sampler).
        multistep_times: re-noising times for more steps, first ``nfe - 1`` used (rCM: 1.5, 1.4, 1.0).
        prior_weighting: multiply each sample's mse by sCM's prior weight ``1 / (sigma_d tan t)``
            (``1 / sigma_t``; FastGen ``prior_weighting_enabled``, on by default there).
        adaptive_weighting: the learned ``e^w mse - w`` (sCM); False: the plain mse (rCM has no
            adaptive weight, so its sCM and DMD terms keep their fixed 100 : 1 balance).
    """

    name = "scm"

    def __init__(
        self,
        tangent: str = "teacher",
        name: str = "scm",
        sigma_data: float = 0.5,
        p_mean: float = -1.0,
        p_std: float = 1.4,
        tangent_warmup: float = 0.1,
        tangent_norm: float = 0.1,
        jvp: str = "exact",
        fd_step: float = 1e-3,
        sigma_max: float = 80.0,
        t_mid: float | None = 1.1,
        multistep_times: Sequence[float] = (1.3, 1.0, 0.6),
        prior_weighting: bool = False,
        adaptive_weighting: bool = True,
    ):
        super().__init__()
        check_choice("tangent", tangent, TANGENTS)
        check_choice("jvp", jvp, JVP_MODES)
        if tangent_warmup < 0:
            raise ConfigError(f"method.objective.tangent_warmup={tangent_warmup} must be >= 0")
        self.name, self.tangent = name, tangent
        self.data_role = "marginal" if tangent == "teacher" else "real"  # sCT's tangent is cos t z - sin t x0
        self.guidance_input = tangent == "teacher"  # a guidance-input student (methods.md 13) needs guided tangents
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.tangent_warmup, self.tangent_norm = tangent_warmup, tangent_norm
        self.jvp_mode, self.fd_step = jvp, fd_step
        self.t_max = float(trig_time(sigma_max, sigma_data))
        self.t_mid, self.multistep_times = t_mid, list(multistep_times)
        if t_mid is None and not self.multistep_times:
            raise ConfigError(
                "method.objective.t_mid=null takes the 2-step time from method.objective.multistep_times, "
                "which is empty"
            )
        self.prior_weighting, self.adaptive_weighting = prior_weighting, adaptive_weighting
        self.warmup_steps = tangent_warmup if tangent_warmup >= 1 or tangent_warmup == 0 else None
        self.weighting = AdaptiveWeight()  # kept when unused: checkpoints have the same keys either way
        if not adaptive_weighting:
            self.weighting.requires_grad_(False)  # out of the graph: DDP must not wait for its gradients

    # --- schedule ------------------------------------------------------------------------
    def set_budget(self, max_steps: int) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = max(1, round(self.tangent_warmup * max_steps))

    def tangent_ratio(self, step: int) -> float:
        """r = min(1, step / H): the df/dt part of the tangent is switched on gradually."""
        horizon = self.warmup_steps if self.warmup_steps is not None else self.tangent_warmup * FALLBACK_BUDGET
        return 1.0 if horizon == 0 else min(1.0, step / horizon)

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        yield from super().trainable_parameters(optimizer, student)
        if self.adaptive_weighting:
            yield from self.weighting.parameters()  # w_phi learns with the student (docs/methods.md 4.2)

    # --- loss ----------------------------------------------------------------------------
    def dxdt(self, x0: Tensor, z: Tensor, x_t: Tensor, t: Tensor, teacher: nn.Module) -> Tensor:
        """``dx_t/dt``: the teacher's PF-ODE (sCD) or the data pair's own (sCT)."""
        if self.tangent == "data":
            t = append_dims(t, x0.ndim)
            return (torch.cos(t) * z.double() - torch.sin(t) * x0.double()).to(x0.dtype)
        with torch.no_grad():
            return self.sigma_data * trig_F(teacher, x_t / self.sigma_data, t, self.sigma_data)

    def student_F_and_tangent(
        self, student: nn.Module, x_t: Tensor, t: Tensor, dxdt: Tensor, r: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(F_theta with grad, F^- = F_theta.detach(), cos t sin t dF^-/dt)``, one dropout draw for all.

        F^- is the gradient forward itself, detached (rCM ``t2v_model_distill_rcm.py:545-546``,
        FastGen ``sCM.py:254``), so ``F_theta - F^-`` is exactly zero and the update is exactly
        along g. A second forward (the JVP's primal) can differ from it by kernel and precision
        (flash vs math attention, bf16), by more than a tangent of norm <= 1 spread over D
        dimensions. The JVP only supplies the tangent ``dF/dt``.
        """
        sd = self.sigma_data
        rng = capture_rng(x_t.device)

        def F(x: Tensor, tt: Tensor) -> Tensor:
            restore_rng(rng, x_t.device)
            return trig_F(student, x, tt, sd)

        x_in = x_t / sd
        F_theta = F(x_in, t)
        if r > 0:
            with torch.no_grad():
                cs = torch.cos(t) * torch.sin(t)  # tangents pre-multiplied by cos t sin t (rCM)
                tangent_x = (append_dims(cs, x_t.ndim) * dxdt.double() / sd).to(x_t.dtype)
                _, cs_dFdt = jvp(F, (x_in, t), (tangent_x, cs), mode=self.jvp_mode, fd_step=self.fd_step)
        else:  # r = 0 multiplies dF/dt by zero: skip the JVP
            cs_dFdt = torch.zeros_like(F_theta)
        return F_theta, F_theta.detach(), cs_dFdt.detach()

    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        sd, r = self.sigma_data, self.tangent_ratio(step)
        t = sample_trig_time(x0.shape[0], self.p_mean, self.p_std, sd, device=x0.device)
        z = sd * torch.randn_like(x0)
        x_t = trig_noise(x0, z, t)
        dxdt = self.dxdt(x0, z, x_t, t, teacher)
        F_theta, F_sg, cs_dFdt = self.student_F_and_tangent(student, x_t, t, dxdt, r)
        g = normalize_tangent(scm_tangent(F_sg, cs_dFdt, x_t, dxdt, t, sd, r), self.tangent_norm)
        target = F_sg.double() + g
        # Rows whose target overflowed carry no signal: zero them before they touch the graph.
        finite = torch.isfinite(target.flatten(1)).all(dim=1)
        target = torch.where(append_dims(finite, target.ndim), target, torch.zeros_like(target))
        mse = (F_theta.double() - target).pow(2).flatten(1).mean(dim=1)
        weighted = mse / (sd * torch.tan(t.double())) if self.prior_weighting else mse  # 1 / sigma_t
        if self.adaptive_weighting:
            w = self.weighting(t).double()
            weighted = torch.exp(w) * weighted - w
        per_sample = torch.where(finite, weighted, torch.zeros_like(mse))
        loss = per_sample.sum() / finite.sum().clamp(min=1)
        return {
            "loss": loss.float(),
            "mse": mse[finite].mean().float().detach() if finite.any() else mse.new_zeros(()).float(),
            "tangent_ratio": torch.tensor(r),
            "finite_fraction": finite.float().mean(),
        }

    # --- sampling ------------------------------------------------------------------------
    def trig_sample_times(self, nfe: int) -> Tensor:
        """TrigFlow times ``[t_max, re-noising times..., 0]`` for ``nfe`` steps (float64)."""
        if nfe < 1 or nfe > len(self.multistep_times) + 1:
            raise ValueError(
                f"nfe={nfe} not supported: 1..{len(self.multistep_times) + 1} (method.objective.multistep_times)"
            )
        mids = [self.t_mid] if nfe == 2 and self.t_mid is not None else self.multistep_times[: nfe - 1]
        return torch.tensor([self.t_max, *mids, 0.0], dtype=torch.float64)

    def sample_times(self, nfe: int) -> Tensor:
        """The same times in FM coordinates (``s = sigma_d sin t / (cos t + sigma_d sin t)``)."""
        return fm_time(self.trig_sample_times(nfe), self.sigma_data)

    def supported_nfes(self, nfes: Sequence[int]) -> list[int]:
        return [n for n in nfes if 1 <= n <= len(self.multistep_times) + 1]

    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        """Multistep consistency sampling (docs/methods.md 4.5) from ``prior_state(noise, s(t_max))``."""
        return SamplingPlan(student, self.sample_times(nfe).tolist(), renoise=True)
