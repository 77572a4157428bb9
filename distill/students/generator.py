"""Few-step generators (DMD2, GDD, rCM's DMD term): a velocity model read as an x0 predictor at a
fixed set of times, sampled by jumping to data and re-noising to the next time (``renoise``), or
by deterministic DDIM jumps between its times and one jump to data at the last (``deterministic``).

A K-step generator is trained at its times ``s_0 = 1 > s_1 > ... > s_{K-1}`` only. Its training
input at ``s_k`` comes from *backward simulation* (docs/methods.md 5.4): run the current generator
from pure noise through the first k steps, re-noising with fresh noise each time, so training
sees exactly the states sampling will produce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.ranks import agreed_randint
from distill.core.samplers import ddim_step
from distill.core.tensors import batch_time

TRANSITIONS = ("renoise", "deterministic")


def check_generator_times(times: Sequence[float]) -> Tensor:
    """The training times as a float64 tensor; refuse anything but a decreasing list in (0, 1]."""
    t = torch.tensor([float(s) for s in times], dtype=torch.float64)
    if len(t) == 0 or not bool(((t > 0) & (t <= 1)).all()) or not bool((t[1:] < t[:-1]).all()):
        raise ConfigError(
            f"method.objective.generator_times={list(times)} must be a decreasing list of FM times in (0, 1]"
        )
    return t


def top_time(model: nn.Module) -> float:
    """The largest FM time ``model`` can be asked about: its process's clamp point
    ``to_fm_time(t_max)`` (EDM: 80 / 81, sigma 80; a VP-discrete SD teacher: t = 999), 1 for FM.

    The model is read through its ``process`` (an EDM / diffusers adapter's, found one wrapper deep);
    a model without one is taken as flow matching.
    """
    for holder in (model, getattr(model, "model", None), getattr(model, "net", None)):
        process = getattr(holder, "process", None)
        if process is not None:
            return float(process.to_fm_time(process.t_max))
    return 1.0


def clamp_generator_times(times: Tensor, model: nn.Module) -> Tensor:
    """``times`` with any time above ``top_time(model)`` lowered to it.

    A non-FM network's process clamps larger times anyway, but its adapter would still scale the
    state as if at s = 1: an EDM generator at s = 1 computes ``(81/80) D(81 z; 80) - z / 80`` instead
    of DMD2's and GDD's ``D(80 z; 80)`` (tianweiy/DMD2 main/edm/train_edm.py:218-225, Zyriix/GDD
    training/loss.py:181-184, 216-219), which ``s = 80/81`` gives exactly.

    Raises:
        ValueError: two times become equal (more than one of them lay above the clamp point).
    """
    top = top_time(model)
    clamped = times.clamp(max=top)
    if not bool((clamped[1:] < clamped[:-1]).all()):
        raise ConfigError(
            f"method.objective.generator_times={times.tolist()}: at most the first may lie above this network's "
            f"largest noise level s = {top:.6g}; lower the others below it"
        )
    return clamped


def sampling_times(times: Tensor, nfe: int) -> Tensor:
    """``nfe`` sampling times, then 0.

    Up to K NFE: the trained times, evenly picked from the first. Beyond K: all K, then evenly
    spaced times below the last one, where the generator never trained (it is still the teacher's
    denoiser there, so extra steps refine rather than break, but expect less than from trained ones).
    """
    k = len(times)
    if nfe < 1:
        raise ValueError(f"nfe={nfe} must be >= 1")
    if nfe <= k:
        picks = times[[(i * k) // nfe for i in range(nfe)]]
    else:
        extra = torch.linspace(float(times[-1]), 0.0, nfe - k + 2, dtype=times.dtype)[1:-1]
        picks = torch.cat([times, extra])
    return torch.cat([picks, times.new_zeros(1)])


def generator_x0(student: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    """The generator's sample from state x at FM time s (B,): the data estimate ``x - s v``."""
    return velocity_to_x0(x, s, student(x, s))


@torch.no_grad()
def backward_simulate(student: nn.Module, noise: Tensor, times: Tensor, k: int) -> Tensor:
    """The state at ``times[k]`` that k sampling steps of the current generator reach from ``noise``."""
    x = times[0].to(noise) * noise
    for i in range(k):
        x0 = generator_x0(student, x, batch_time(times[i], x))
        x = fm_noise(x0, torch.randn_like(x0), batch_time(times[i + 1], x))
    return x


def training_sample(student: nn.Module, noise: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    """A generator sample with gradient from one random generator time (rank 0's on every rank),
    reached by backward simulation (no grad) and finished by one step with grad. Returns (x_hat, its
    (B,) time)."""
    times = times.to(noise)
    k = agreed_randint(len(times), noise.device)
    x = backward_simulate(student, noise, times, k)
    s = times[k].expand(noise.shape[0])
    return generator_x0(student, x, s), s


def deterministic_sample(student: nn.Module, noise: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    """A generator sample along its deterministic chain, with gradient through every step: DDIM jumps
    ``x + (s_next - s) v`` between the times (the edge maps a PCM warm start learned; a DDIM jump is
    the x0 jump re-noised with the model's own noise estimate), then the data estimate at the last
    time. Returns (x_hat, its (B,) time)."""
    times = times.to(noise)
    x = times[0] * noise
    for s, s_next in zip(times[:-1], times[1:], strict=True):
        x = ddim_step(student, x, batch_time(s, x), batch_time(s_next, x))
    s = batch_time(times[-1], x)
    return generator_x0(student, x, s), s
