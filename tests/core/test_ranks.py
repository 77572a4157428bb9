"""distill.core.ranks: the random choices that shape a step are rank 0's on every rank."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from distill.core.anyflow import draw_rollout
from distill.core.ranks import agreed_randint, all_reduce_sum
from distill.lit.local_ranks import run_local_ranks


def test_in_one_process_the_draw_is_torchs_own() -> None:
    torch.manual_seed(0)
    own = [int(torch.randint(7, ())) for _ in range(20)]
    torch.manual_seed(0)
    assert [agreed_randint(7) for _ in range(20)] == own
    assert all_reduce_sum(torch.tensor([2.0])).item() == 2.0


def _draw(rank: int, world: int, out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(100 + rank)  # each rank's own stream, as RankSeed gives them
        own = [int(torch.randint(1000, ())) for _ in range(8)]
        torch.manual_seed(100 + rank)
        agreed = [agreed_randint(1000) for _ in range(8)]
        rollouts = [draw_rollout([2, 4, 8, 16, 50]) for _ in range(8)]
        torch.save({"own": own, "agreed": agreed, "rollouts": rollouts}, out / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_rank_zeros_draw(tmp_path: Path) -> None:
    run_local_ranks(_draw, 2, tmp_path)
    zero, one = (torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1))
    assert zero["own"] != one["own"]  # the ranks' streams differ ...
    assert zero["agreed"] == one["agreed"] == zero["own"]  # ... and rank 0's choice holds on both
    assert zero["rollouts"] == one["rollouts"] and all(0 <= k < nfe for nfe, k in zero["rollouts"])
