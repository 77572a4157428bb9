"""Throughput benchmark: training steps/s (Lightning vs a plain loop) and sampling samples/s per NFE.

    python experiments/bench.py --out experiments/results/bench.md

Not a test: numbers depend on the machine, which the report names.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.core.grids import make_grid
from distill.core.samplers import SAMPLERS, prior_state, sampler_nfe
from distill.data.digits import load_digits_split
from distill.lit.distill import DistillModule
from distill.methods.progressive import ProgressiveDistillation
from distill.students.flow_map import student_from_teacher
from distill.teachers import load_teacher


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def plain_loop(teacher, method, batches: list[torch.Tensor]) -> float:
    student = student_from_teacher(teacher.model)
    opt = torch.optim.Adam(student.parameters(), lr=2e-4)
    start = time.perf_counter()
    for step, x0 in enumerate(batches):
        loss = method.loss("student", x0, teacher, student, step)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    return len(batches) / (time.perf_counter() - start)


def lightning_loop(teacher, method, batches: list[torch.Tensor]) -> float:
    module = DistillModule(teacher, student_from_teacher(teacher.model), method,
                           lambda p: torch.optim.Adam(p, lr=2e-4), ema_decays=[], grad_clip=1.0)
    loader = DataLoader(TensorDataset(torch.cat(batches)), batch_size=batches[0].shape[0])
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return len(batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=os.path.expanduser("~/.cache/distill/teachers/digits"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="experiments/results/bench.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = load_teacher(args.teacher)
    x, _ = load_digits_split("train")
    batches = [x[torch.randint(0, len(x), (128,))] for _ in range(args.steps)]
    method = ProgressiveDistillation(start_steps=32, steps_per_round=10**9)  # one round: steady-state steps
    plain_loop(teacher, method, batches[:5])  # warm-up
    plain = plain_loop(teacher, method, batches)
    lit = lightning_loop(teacher, method, batches)
    lines = [f"# distill benchmark\n\nMachine: {machine()}\n", "## Training (progressive distillation, digits, batch 128)\n",
             "| loop | steps/s |", "|---|---:|", f"| plain PyTorch | {plain:.2f} |", f"| Lightning DistillModule | {lit:.2f} |",
             f"\nFramework overhead: {100 * (plain / lit - 1):.1f}% (includes Lightning's fit start-up)\n",
             "## Teacher sampling (digits, batch 1000)\n", "| sampler | NFE | samples/s |", "|---|---:|---:|"]
    noise = torch.randn(1000, *teacher.data_shape)
    for sampler in ("euler", "heun", "dpmpp_2m"):
        for steps in (1, 4, 16):
            grid = make_grid("cosine", steps)
            start = time.perf_counter()
            SAMPLERS[sampler](teacher, prior_state(noise, grid[0]), grid)
            rate = len(noise) / (time.perf_counter() - start)
            lines.append(f"| {sampler} | {sampler_nfe(sampler, steps)} | {rate:.0f} |")
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
