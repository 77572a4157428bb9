"""Per-rank memory under FSDP: weights, gradients and optimizer state on 1, 2 and 4 CPU ranks.

    python experiments/fsdp_memory.py --out experiments/results/fsdp_memory.md   # make fsdp-memory

Each method (as ``distill-train`` builds it on the digits teacher) trains a few batches under
``hardware=fsdp_sim``'s strategy on N gloo ranks started here; every rank then counts the bytes it
holds: its shards of every parameter and buffer, of the gradients, and of Adam's moments. The
estimate is the rule of docs/scaling.md ("Memory per method"): 16 bytes per trained parameter
(weights 4, gradients 4, Adam 8) and 4 per frozen one, divided by N. Counts are exact (storage bytes,
each storage once); FSDP pads a tensor whose first dimension does not divide by N, so a rank may
hold a few elements more than 1/N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader, TensorDataset

from distill.build import CONF_DIR, build_module
from distill.data.digits import load_digits_split
from distill.lit.local_ranks import run_local_ranks
from distill.lit.memory import module_memory_bytes, optimizer_memory_bytes, storage_bytes
from distill.teachers import load_teacher

METHODS = {  # name -> overrides: one optimizer; two with auxiliary nets; a JVP; a LoRA student
    "progressive": ["method=progressive"],
    "dmd2": ["method=dmd2"],
    "scd": ["method=scd"],
    "arcflow (LoRA)": ["method=arcflow"],
}
RANKS = (1, 2, 4)
BATCH, BATCHES = 16, 10


def compose_run(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["dataset=digits", f"train.max_steps={BATCHES}", *overrides])


def estimate_bytes(module) -> int:
    """docs/scaling.md's rule: 16 bytes per trained parameter, 4 per frozen one, each storage once."""
    trained = storage_bytes(p for p in module.parameters() if p.requires_grad)
    return storage_bytes(module.parameters()) + 3 * trained  # + gradients (4) and Adam (8) per 4 weight bytes


def _rank(rank: int, world: int, out: Path, cfg) -> None:
    seed_everything(0, verbose=False)
    module = build_module(cfg, load_teacher(cfg.teacher.path))
    estimate = estimate_bytes(module)  # before sharding: the whole networks
    images, _ = load_digits_split("train")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=instantiate(cfg.hardware.strategy),
        max_steps=module.optimizer_steps_bound(module.max_batches),
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(images[: BATCH * BATCHES].float()), batch_size=BATCH))
    figures = {
        "weights": module_memory_bytes(module),
        "gradients": storage_bytes(p.grad for p in module.parameters() if p.grad is not None),
        "optimizer": optimizer_memory_bytes(*trainer.optimizers),
        "estimate": estimate // world,
        "teacher_parameters": sum(p.numel() for p in module.teacher.parameters()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(figures))


def measure(cfg, world: int, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    run_local_ranks(_rank, world, out, cfg)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def kib(n: float) -> str:
    return f"{n / 1024:,.0f}"


def report(rows: dict[str, dict[int, list[dict]]], seconds: float) -> str:
    lines = [
        "# Per-rank memory under FSDP (CPU ranks)",
        "",
        f"`python experiments/fsdp_memory.py` (`make fsdp-memory`), {seconds:.0f} s on {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Digits teacher, `hardware=fsdp_sim`'s strategy on N gloo ranks, "
        f"{BATCHES} batches of {BATCH}; KiB held by the fullest rank (weights and buffers, gradients, Adam "
        "state) against docs/scaling.md's rule divided by N (16 bytes per trained parameter, 4 per frozen one).",
        "",
        "| method | ranks | weights | gradients | optimizer | total | rule / N | total / (rule / N) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, by_world in rows.items():
        for world, ranks in by_world.items():
            fullest = max(ranks, key=lambda r: r["weights"] + r["gradients"] + r["optimizer"])
            total = fullest["weights"] + fullest["gradients"] + fullest["optimizer"]
            cells = [fullest[k] for k in ("weights", "gradients", "optimizer")] + [total, fullest["estimate"]]
            ratio = total / fullest["estimate"]
            lines.append(f"| {method} | {world} | {' | '.join(kib(c) for c in cells)} | {ratio:.2f} |")
    lines += [
        "",
        "The rule is taken when the module is built. Progressive distillation grows past it while it trains:",
        "one frozen snapshot of the student per finished round, and Adam's state cleared at each round's end.",
        "A tensor whose first dimension does not divide by N is padded to a multiple of N (LoRA adapters of",
        "rank 2 on 4 ranks), so its shards hold a little more than 1/N.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/fsdp_memory.md"))
    parser.add_argument("--work", type=Path, default=Path("experiments/runs/fsdp_memory"))
    args = parser.parse_args()
    start = time.time()
    rows: dict[str, dict[int, list[dict]]] = {}
    for method, overrides in METHODS.items():
        cfg = compose_run([*overrides, "hardware=fsdp_sim"])
        rows[method] = {}
        for world in RANKS:
            rows[method][world] = measure(cfg, world, args.work / method.split()[0] / str(world))
            print(f"{method}: {world} ranks done", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, time.time() - start))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
