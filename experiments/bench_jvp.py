"""sCM training-step cost with an exact JVP (forward-mode AD) vs a finite-difference one.

    python experiments/bench_jvp.py --out experiments/results/jvp.md

Times full sCD steps (teacher call, JVP, gradient forward/backward, Adam) on the digits teacher,
batch 128, after a warm-up; also reports how far the two modes' tangents are apart. Not a test:
numbers depend on the machine (and its load), which the report names.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from distill.core.trigflow import sample_trig_time, trig_noise
from distill.data.digits import load_digits_split
from distill.methods.scm import SCM
from distill.students.flow_map import student_from_teacher
from distill.teachers import load_teacher


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {gpu}, torch {torch.__version__}"


def step_times(teacher, mode: str, batches: list[torch.Tensor], warmup: int, device: torch.device) -> list[float]:
    """Milliseconds per sCD step (r = 1, so every step takes the JVP), warm-up steps dropped."""
    torch.manual_seed(0)
    student = student_from_teacher(teacher.model).to(device)
    method = SCM(tangent="teacher", jvp=mode, tangent_warmup=0).to(device)
    opt = torch.optim.Adam(list(method.trainable_parameters("student", student)), lr=1e-4)
    times = []
    for step, x0 in enumerate(batches):
        start = time.perf_counter()
        loss = method.loss("student", x0.to(device), teacher, student, step)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return times[warmup:]


def tangent_gap(teacher, x0: torch.Tensor, device: torch.device, fd_step: float) -> float:
    """Max |exact - finite difference| of ``cos t sin t dF/dt`` relative to its max magnitude."""
    torch.manual_seed(0)
    student = student_from_teacher(teacher.model).to(device)
    x0 = x0.to(device)
    t = sample_trig_time(len(x0), -1.0, 1.4, 0.5, device=device)
    z = 0.5 * torch.randn_like(x0)
    x_t = trig_noise(x0, z, t)
    out = {}
    for mode in ("exact", "finite_difference"):
        method = SCM(tangent="teacher", jvp=mode, fd_step=fd_step)
        dxdt = method.dxdt(x0, z, x_t, t, teacher)
        out[mode] = method.student_F_and_tangent(student, x_t, t, dxdt, r=1.0)[2]
    return float((out["exact"] - out["finite_difference"]).abs().max() / out["exact"].abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=os.path.expanduser("~/.cache/distill/teachers/digits"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="experiments/results/jvp.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher(args.teacher).to(device)
    x, _ = load_digits_split("train")
    gen = torch.Generator().manual_seed(0)
    batches = [x[torch.randint(0, len(x), (args.batch,), generator=gen)] for _ in range(args.warmup + args.steps)]
    rows = []
    for mode in ("exact", "finite_difference"):
        ms = step_times(teacher, mode, batches, args.warmup, device)
        rows.append((mode, statistics.mean(ms), statistics.median(ms), statistics.stdev(ms)))
    base = rows[0][1]
    lines = [
        "# sCM training step: exact vs finite-difference JVP\n",
        f"Machine: {machine()}\n",
        f"sCD steps on the digits teacher (UNet, 8x8), batch {args.batch}, tangent warm-up off (every step "
        f"takes the JVP); mean over {args.steps} steps after {args.warmup} warm-up steps.\n",
        "| jvp | mean ms/step | median ms/step | std ms | relative |",
        "|---|---:|---:|---:|---:|",
        *(f"| {m} | {mean:.1f} | {med:.1f} | {sd:.1f} | {mean / base:.2f}x |" for m, mean, med, sd in rows),
        "\nMax |exact - finite difference| of cos t sin t dF/dt, relative to its max (float32): "
        + ", ".join(f"{tangent_gap(teacher, batches[0], device, h):.1e} at step {h:g}" for h in (1e-3, 0.1))
        + " (0.1 is conf/method/scd.yaml's: a low-pass, not an approximation error to shrink).\n",
    ]
    report = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
