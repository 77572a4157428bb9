"""Noise processes ``x_t = alpha(t) x0 + sigma(t) eps`` and their exact maps to flow-matching time.

Every process is the same family of marginals up to a per-time rescaling of the state
(docs/methods.md 1.1-1.5). The canonical coordinates are flow matching (FM): time
``s = sigma / (alpha + sigma)`` in [0, 1] (s = 1 is pure noise) and state
``x_s = x_t / (alpha + sigma)``, so ``x_s = (1 - s) x0 + s eps``. A process only has to say
``alpha``, ``sigma`` and how to invert ``s -> t``; the rest is shared.

Scalings are computed in float64 (the 1/sin, 1/cos and s/(1-s) singularities lose precision in
float32) and returned in the input's dtype.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from distill.core.tensors import append_dims


def _as_f64(t: float | Tensor) -> tuple[Tensor, torch.dtype]:
    """``t`` as a float64 tensor, plus the dtype results should be returned in."""
    if not isinstance(t, Tensor):
        return torch.as_tensor(t, dtype=torch.float64), torch.float64
    out_dtype = t.dtype if t.is_floating_point() else torch.float64
    return t.to(torch.float64), out_dtype


def _fm_log_ratio(s: Tensor) -> Tensor:
    """``log(s / (1 - s))`` = log(sigma/alpha) in float64; -inf at s = 0, +inf at s = 1 (no nan)."""
    return torch.log(s) - torch.log1p(-s)


class NoiseProcess(abc.ABC):
    """Base of all processes. Subclasses implement the float64 kernels ``_alpha``, ``_sigma``,
    ``_from_fm_time`` and the properties ``t_min`` / ``t_max``; the public methods accept any
    float dtype, compute in float64 and return the input's dtype.
    """

    @property
    @abc.abstractmethod
    def t_min(self) -> float:
        """Smallest native time (least noise)."""

    @property
    @abc.abstractmethod
    def t_max(self) -> float:
        """Largest native time (most noise)."""

    @abc.abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _from_fm_time(self, s: Tensor) -> Tensor:
        """Exact inverse of ``to_fm_time`` on float64 input, clamped to [t_min, t_max]."""

    # ---- public API -------------------------------------------------------------------------

    def alpha(self, t: float | Tensor) -> Tensor:
        """Signal scale alpha(t), same shape as ``t``."""
        t64, dtype = _as_f64(t)
        return self._alpha(t64).to(dtype)

    def sigma(self, t: float | Tensor) -> Tensor:
        """Noise scale sigma(t), same shape as ``t``."""
        t64, dtype = _as_f64(t)
        return self._sigma(t64).to(dtype)

    def to_fm_time(self, t: float | Tensor) -> Tensor:
        """FM time ``s = sigma / (alpha + sigma)`` of native time ``t``."""
        t64, dtype = _as_f64(t)
        a, s = self._alpha(t64), self._sigma(t64)
        return (s / (a + s)).to(dtype)

    def from_fm_time(self, s: float | Tensor) -> Tensor:
        """Native time ``t`` with ``to_fm_time(t) = s``, clamped to [t_min, t_max]."""
        s64, dtype = _as_f64(s)
        return self._from_fm_time(s64.clamp(0.0, 1.0)).to(dtype)

    def to_fm_state(self, x: Tensor, t: Tensor) -> Tensor:
        """FM state ``x_s = x_t / (alpha + sigma)``.

        Args:
            x: (B, ...) state of this process at time ``t``.
            t: (B,) native times.
        """
        t64, _ = _as_f64(t)
        scale = self._alpha(t64) + self._sigma(t64)
        return x / append_dims(scale.to(x.dtype), x.ndim)

    def from_fm_state(self, x_s: Tensor, s: Tensor) -> Tensor:
        """Native state ``x_t = x_s (alpha + sigma)`` at ``t = from_fm_time(s)``.

        Args:
            x_s: (B, ...) FM state at FM time ``s``.
            s: (B,) FM times.
        """
        s64, _ = _as_f64(s)
        t64 = self._from_fm_time(s64.clamp(0.0, 1.0))
        scale = self._alpha(t64) + self._sigma(t64)
        return x_s * append_dims(scale.to(x_s.dtype), x_s.ndim)

    def edm_sigma(self, t: float | Tensor) -> Tensor:
        """EDM/VE noise level ``sigma / alpha`` (= s / (1 - s) in FM time)."""
        t64, dtype = _as_f64(t)
        return (self._sigma(t64) / self._alpha(t64)).to(dtype)

    def logsnr(self, t: float | Tensor) -> Tensor:
        """``log(alpha^2 / sigma^2)``."""
        t64, dtype = _as_f64(t)
        return (2 * (torch.log(self._alpha(t64)) - torch.log(self._sigma(t64)))).to(dtype)


@dataclass(frozen=True)
class FlowMatching(NoiseProcess):
    """Rectified flow / FM (docs/methods.md 1.4): alpha = 1 - s, sigma = s, s in [0, 1]."""

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 1.0

    def _alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def _sigma(self, t: Tensor) -> Tensor:
        return t

    def _from_fm_time(self, s: Tensor) -> Tensor:
        return s


@dataclass(frozen=True)
class EDM(NoiseProcess):
    """EDM / VE (docs/methods.md 1.2-1.3): t is sigma, alpha = 1, sigma = t, t in [sigma_min, sigma_max].

    FM times are clamped at both ends, so an EDM network is only ever asked about the levels its
    own sampler uses: s = 1 (sigma = inf) maps to ``sigma_max``, and s = 0 (clean data) to
    ``sigma_min``. At sigma = 0 an EDM network is undefined (``c_noise = ln(sigma) / 4`` is -inf)
    and an x0-prediction gives no noise estimate (``eps = (x - x0) / sigma`` is 0/0); the clamp
    keeps both finite, so a consistency map ``x - s v`` is exactly ``x`` at s = 0.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return t

    def _from_fm_time(self, s: Tensor) -> Tensor:
        # Clamp s first so that s = 1 never divides by zero.
        s_max = self.sigma_max / (1 + self.sigma_max)
        s_c = s.clamp(0.0, s_max)
        sigma = torch.where(s >= s_max, self.sigma_max, s_c / (1 - s_c))
        return sigma.clamp(self.sigma_min, self.sigma_max)


@dataclass(frozen=True)
class VPCosine(NoiseProcess):
    """Continuous VP cosine schedule (docs/methods.md 1.1): alpha = cos(pi t / 2), sigma = sin(pi t / 2).

    The logSNR ``-2 log tan(pi t / 2)`` is clipped to [logsnr_min, logsnr_max] as in progressive
    distillation, i.e. t is clamped to [t_min, t_max] inside (0, 1).
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    @property
    def t_min(self) -> float:
        return 2 / math.pi * math.atan(math.exp(-0.5 * self.logsnr_max))

    @property
    def t_max(self) -> float:
        return 2 / math.pi * math.atan(math.exp(-0.5 * self.logsnr_min))

    def _clamp(self, t: Tensor) -> Tensor:
        return t.clamp(self.t_min, self.t_max)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * self._clamp(t))

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * self._clamp(t))

    def _from_fm_time(self, s: Tensor) -> Tensor:
        # tan(pi t / 2) = sigma / alpha = s / (1 - s); atan2 is finite at both ends.
        return self._clamp(2 / math.pi * torch.atan2(s, 1 - s))


def _ddpm_betas(num_train_timesteps: int, beta_start: float, beta_end: float, schedule: str) -> Tensor:
    """DDPM / diffusers beta schedule in float64."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown beta_schedule {schedule!r}; valid: 'linear', 'scaled_linear'")


@dataclass(frozen=True)
class VPDiscrete(NoiseProcess):
    """Discrete DDPM schedule (diffusers convention): t is a timestep index in [0, T - 1].

    ``alpha_bar = cumprod(1 - beta)``, alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) at
    integer t; between integers log(sigma / alpha) is interpolated linearly, which keeps
    alpha^2 + sigma^2 = 1 and makes the map to FM time strictly monotone (so invertible).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)
    _log_ratio: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        betas = _ddpm_betas(self.num_train_timesteps, self.beta_start, self.beta_end, self.beta_schedule)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        # log(sigma / alpha) per integer timestep, strictly increasing since every beta > 0.
        log_ratio = 0.5 * (torch.log1p(-alphas_cumprod) - torch.log(alphas_cumprod))
        object.__setattr__(self, "_log_ratio", log_ratio)

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(self.num_train_timesteps - 1)

    def _interp_log_ratio(self, t: Tensor) -> Tensor:
        table = self._log_ratio.to(t.device)
        t = t.clamp(self.t_min, self.t_max)
        i0 = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = t - i0.to(t.dtype)
        return table[i0] + frac * (table[i0 + 1] - table[i0])

    def _alpha(self, t: Tensor) -> Tensor:
        # alpha = 1 / sqrt(1 + r^2) with r = sigma / alpha, written stably in log space.
        lr = self._interp_log_ratio(t)
        return torch.exp(-0.5 * torch.nn.functional.softplus(2 * lr))

    def _sigma(self, t: Tensor) -> Tensor:
        lr = self._interp_log_ratio(t)
        return torch.exp(lr - 0.5 * torch.nn.functional.softplus(2 * lr))

    def _from_fm_time(self, s: Tensor) -> Tensor:
        table = self._log_ratio.to(s.device)
        target = _fm_log_ratio(s)
        # Segment [i-1, i] holding the target; ends extrapolate and are then clamped.
        i = torch.searchsorted(table, target.contiguous()).clamp(1, self.num_train_timesteps - 1)
        lo, hi = table[i - 1], table[i]
        t = (i - 1).to(s.dtype) + (target - lo) / (hi - lo)
        return t.clamp(self.t_min, self.t_max)


@dataclass(frozen=True)
class TrigFlow(NoiseProcess):
    """TrigFlow (docs/methods.md 1.5): alpha = cos t, sigma = sigma_data sin t, t in [0, pi / 2]."""

    sigma_data: float = 0.5

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 0.5 * math.pi

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.sin(t)

    def _from_fm_time(self, s: Tensor) -> Tensor:
        # sigma_data tan t = s / (1 - s).
        return torch.atan2(s, self.sigma_data * (1 - s)).clamp(self.t_min, self.t_max)


PROCESSES: dict[str, type[NoiseProcess]] = {
    "fm": FlowMatching,
    "edm": EDM,
    "vp_cosine": VPCosine,
    "vp_discrete": VPDiscrete,
    "trigflow": TrigFlow,
}


def make_process(name: str, **kwargs: object) -> NoiseProcess:
    """Build a process by name (``fm``, ``edm``, ``vp_cosine``, ``vp_discrete``, ``trigflow``)."""
    if name not in PROCESSES:
        raise ValueError(f"unknown noise process {name!r}; valid names: {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)
