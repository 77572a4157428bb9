"""Per-rank randomness: each rank its own stream; one process keeps the stream it had."""

from types import SimpleNamespace

import numpy as np
import torch

from distill.callbacks.rank_seed import RankSeed, rank_seed
from distill.callbacks.resume import RUN_KEY, RunState
from distill.core.rng import process_rng_state


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


def test_a_resumed_rank_continues_its_saved_stream_not_a_fresh_seed():
    """RankSeed reseeds at fit start; RunState then restores the checkpoint's per-rank states at train
    start (Lightning calls on_fit_start first), so a resumed rank draws what it would have drawn."""
    trainer = SimpleNamespace(world_size=2, global_rank=1)
    saved = []
    for rank in range(2):
        torch.manual_seed(40 + rank)
        saved.append(process_rng_state())
    expected = torch.randn(4)  # rank 1's next draws in the run that was interrupted
    run_state = RunState("dmd2")
    run_state.on_load_checkpoint(trainer, None, {RUN_KEY: {"rng": saved}})
    RankSeed(seed=0).on_fit_start(trainer, SimpleNamespace(step_count=torch.tensor(10)))
    run_state.on_train_start(trainer, None)
    torch.testing.assert_close(torch.randn(4), expected)
