"""Per-rank randomness: each rank its own stream; one process keeps the stream it had."""

from types import SimpleNamespace

import numpy as np
import torch

from distill.lit.rank_seed import RankSeed, rank_seed


def test_every_rank_seed_and_resume_step_gets_its_own_seed():
    seeds = {rank_seed(seed, rank, step) for seed in (0, 1) for rank in range(8) for step in (0, 500)}
    assert len(seeds) == 32 and all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(0, 3, 7) == rank_seed(0, 3, 7)


def _draws_after_fit_start(rank: int, world: int, step: int = 0) -> torch.Tensor:
    torch.manual_seed(123)
    np.random.seed(123)
    trainer = SimpleNamespace(world_size=world, global_rank=rank)
    RankSeed(seed=0).on_fit_start(trainer, SimpleNamespace(step_count=torch.tensor(step)))
    return torch.cat([torch.randn(4), torch.from_numpy(np.random.rand(2)).float()])


def test_ranks_draw_different_noise_and_a_single_process_keeps_its_stream():
    rank0, rank1 = _draws_after_fit_start(0, 2), _draws_after_fit_start(1, 2)
    assert not torch.allclose(rank0, rank1)
    torch.testing.assert_close(rank1, _draws_after_fit_start(1, 2))  # reproducible
    assert not torch.allclose(rank1, _draws_after_fit_start(1, 2, step=10))  # a resume without states moves on
    torch.manual_seed(123)
    np.random.seed(123)
    untouched = torch.cat([torch.randn(4), torch.from_numpy(np.random.rand(2)).float()])
    torch.testing.assert_close(_draws_after_fit_start(0, 1), untouched)
