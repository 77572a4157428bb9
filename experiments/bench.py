"""Benchmarks: framework overhead per method, sampling throughput per NFE, memory per method.

    python experiments/bench.py --out experiments/results/bench.md
    python experiments/bench.py --methods progressive,scd,dmd2,meanflow --repeats 7 --steps 40

Training: the Lightning ``DistillModule`` (as ``distill-train`` builds it from ``conf/method/``)
against a plain PyTorch loop running the same objective on the same networks, optimizers, gradient
clipping, EMA and batches. Steady state only: each run drops its first ``--warmup`` steps (and so
Lightning's start-up), the two loops alternate run by run, and the median of ``--repeats`` runs
is reported. With a GPU both loops run bf16 autocast and a compiled student. Not a test: figures
depend on the machine and its load, which the report names.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

from distill.build import CONF_DIR, build_module
from distill.callbacks.speedups import Speedups
from distill.core.grids import make_grid
from distill.core.samplers import SAMPLERS, prior_state, sampler_nfe
from distill.data.digits import load_digits_split
from distill.lit.distill import DistillModule
from distill.lit.memory import MIB, module_memory_bytes
from distill.nets.acceleration import compile_forward
from distill.teachers import load_teacher

STUDENT_NFES = (1, 2, 4)


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {gpu}, "
        f"torch {torch.__version__}, lightning {L.__version__}; load average (1, 5, 15 min) at the start: {load}"
    )


def method_config(method: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"method={method}", "experiment=bench_digits"])


def fresh_module(cfg, teacher, batches: int) -> DistillModule:
    torch.manual_seed(0)  # the same initial weights for both loops
    module = build_module(cfg, teacher)
    module.max_batches = batches
    return module


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(stamps: list[float], warmup: int) -> float:
    """Steps per second after the first ``warmup`` steps (``stamps``: each step's end time)."""
    return (len(stamps) - warmup) / (stamps[-1] - stamps[warmup - 1])


class StepClock(L.Callback):
    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def lightning_run(cfg, teacher, loader, n: int, device: torch.device) -> tuple[list[float], DistillModule]:
    module = fresh_module(cfg, teacher, n)
    clock = StepClock(device)
    gpu = device.type == "cuda"
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=module.optimizer_steps_bound(n),
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock, Speedups(compile=gpu)],
    )
    trainer.fit(module, loader)
    return clock.stamps, module


def epochs(loader: DataLoader, n: int):
    """``n`` batches, epoch after epoch, as Lightning's loop draws them (digits' training split is 9
    batches of 128: every run crosses epoch boundaries)."""
    count = 0
    while True:
        for batch in loader:
            if count == n:
                return
            yield batch
            count += 1


def plain_run(cfg, teacher, loader, n: int, device: torch.device) -> tuple[list[float], DistillModule]:
    """What DistillModule.training_step does, written out as a loop: phases, learning-rate scale,
    loss, backward, clipping, step, EMA, the method's end-of-step hook."""
    module = fresh_module(cfg, teacher, n).to(device)
    teacher, student, method = module.teacher, module.student, module.method
    if device.type == "cuda":
        compile_forward(student)
    opts = dict(zip(method.optimizer_names, module.configure_optimizers(), strict=True))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    stamps = []
    for step, (x0,) in enumerate(epochs(loader, n)):
        x0 = x0.to(device, non_blocking=True)
        for phase in method.phases(step):
            opt = opts[phase]
            for group, base in zip(opt.param_groups, module.base_lrs[phase], strict=True):
                group["lr"] = base * method.lr_scale(phase, step)
            with autocast:
                loss = method.loss(phase, x0, teacher, student, step)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], module.grad_clip)
            opt.step()
        module.ema.update(student)
        for name in method.on_step_end(step, student):
            opts[name].state.clear()
        synchronize(device)
        stamps.append(time.perf_counter())
    module.optimizers_for_memory = list(opts.values())
    return stamps, module


def training_rows(methods: list[str], teacher, x: torch.Tensor, args, device: torch.device) -> tuple[list[str], dict]:
    lines = [
        "| method | plain PyTorch steps/s | Lightning steps/s | overhead (range) | runs (plain / Lightning steps/s) |",
        "|---|---:|---:|---:|---|",
    ]
    modules = {}
    n = args.warmup + args.steps
    for method in methods:
        cfg = method_config(method)
        plain, lit = [], []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for repeat in range(args.repeats):  # alternate the order: drift in the machine's load hits both
            runs = [("plain", plain_run), ("lightning", lightning_run)]
            for kind, run in runs if repeat % 2 == 0 else runs[::-1]:
                loader = DataLoader(
                    TensorDataset(x),
                    batch_size=args.batch,
                    shuffle=True,
                    drop_last=True,
                    generator=torch.Generator().manual_seed(0),
                    pin_memory=device.type == "cuda",
                )
                stamps, module = run(cfg, teacher, loader, n, device)  # the same batches in every run
                (plain if kind == "plain" else lit).append(steady_rate(stamps, args.warmup))
                modules.setdefault(method, {})[kind] = module
        if device.type == "cuda":
            modules[method]["cuda_peak"] = torch.cuda.max_memory_allocated(device)
        # Each repeat's two runs are neighbours in time: their ratio cancels most of the load drift.
        ratios = sorted(100 * (a / b - 1) for a, b in zip(plain, lit, strict=True))
        runs = "; ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(plain, lit, strict=True))
        lines.append(
            f"| {method} | {statistics.median(plain):.2f} | {statistics.median(lit):.2f} | "
            f"{statistics.median(ratios):+.1f}% ({ratios[0]:+.0f}% .. {ratios[-1]:+.0f}%) | {runs} |"
        )
        print(lines[-1], flush=True)
    return lines, modules


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def activation_bytes(module: DistillModule, x0: torch.Tensor) -> int:
    """Most bytes any phase of one step saves for its backward (activations, on top of the weights)."""
    peak = 0
    for phase in module.method.phases(0):
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if not isinstance(t, torch.nn.Parameter):
                saved += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = module.method.loss(phase, x0, module.teacher, module.student, 0)["loss"]
        loss.backward()
        peak = max(peak, saved)
    return peak


def memory_rows(modules: dict, x0: torch.Tensor, device: torch.device) -> list[str]:
    lines = [
        "| method | trainable copies | frozen copies (teacher included) | weights MiB | grads MiB | "
        "optimizer state MiB | activations MiB (batch) | CUDA peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, runs in modules.items():
        module = runs["plain"]
        unit = sum(p.numel() for p in module.teacher.parameters())
        trainable = [p for p in module.parameters() if p.requires_grad]
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        state = [
            t
            for opt in module.optimizers_for_memory
            for s in opt.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        ]
        acts = activation_bytes(module, x0.to(device))
        peak = f"{runs['cuda_peak'] / MIB:.0f}" if "cuda_peak" in runs else "n/a (CPU)"
        lines.append(
            f"| {method} | {sum(p.numel() for p in trainable) / unit:.2f} | {frozen / unit:.2f} | "
            f"{module_memory_bytes(module) / MIB:.1f} | {tensor_bytes(trainable) / MIB:.1f} | "
            f"{tensor_bytes(state) / MIB:.1f} | {acts / MIB:.1f} | {peak} |"
        )
    return lines


def samples_per_second(sample, noise: torch.Tensor, device: torch.device, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        sample()
        synchronize(device)
        rates.append(len(noise) / (time.perf_counter() - start))
    return statistics.median(rates)


def sampling_rows(teacher, modules: dict, device: torch.device) -> list[str]:
    noise = torch.randn(1000, *teacher.data_shape, device=device)
    lines = ["| model | sampler | NFE | samples/s |", "|---|---|---:|---:|"]
    with torch.no_grad():
        for sampler in ("euler", "heun", "dpmpp_2m"):
            for steps in (1, 4, 16):
                grid = make_grid("cosine", steps).to(device)
                run = partial(SAMPLERS[sampler], teacher, prior_state(noise, grid[0]), grid)
                rate = samples_per_second(run, noise, device)
                lines.append(f"| teacher | {sampler} | {sampler_nfe(sampler, steps)} | {rate:.0f} |")
        for method, runs in modules.items():
            module = runs["plain"]
            for nfe in module.method.supported_nfes(STUDENT_NFES):
                run = partial(module.method.sample, module.sampling_student(), noise, nfe)
                rate = samples_per_second(run, noise, device)
                lines.append(f"| {method} student | the method's own | {nfe} | {rate:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=os.path.expanduser("~/.cache/distill/teachers/digits"))
    parser.add_argument("--methods", default="progressive,scd,dmd2")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, after the warm-up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="experiments/results/bench.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        args.warmup = max(args.warmup, 15)  # compilation happens in the first steps
    header = machine(device)
    teacher = load_teacher(args.teacher).to(device)
    x, _ = load_digits_split("train")
    mode = "bf16 autocast, compiled student" if device.type == "cuda" else "fp32"
    lines = [
        f"# distill benchmark\n\nMachine: {header}\n",
        f"Command: `python {' '.join(sys.argv)}`\n",
        f"## Training throughput (digits, batch {args.batch}, {mode})\n",
        f"Median of {args.repeats} runs of {args.steps} steps each after {args.warmup} warm-up steps; "
        "overhead: the median over repeats of plain / Lightning - 1, each repeat's two runs back to back "
        "(range: the smallest and largest repeat).\n",
    ]
    rows, modules = training_rows(args.methods.split(","), teacher, x, args, device)
    lines += rows
    lines += [
        "\n## Memory per method (digits UNet, batch 128)\n",
        "Copies in units of the teacher's parameter count. Weights: every network the module holds "
        "(teacher, student, EMA copies, the method's nets). Activations: the most any phase of one step "
        "saves for backward.\n",
    ]
    lines += memory_rows(modules, x[: args.batch], device)
    lines += ["\n## Sampling throughput (digits, batch 1000)\n"]
    lines += sampling_rows(teacher, modules, device)
    lines.append(f"\nLoad average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
