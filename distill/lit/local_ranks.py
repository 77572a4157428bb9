"""Ranks started by the caller on this machine, which Lightning then joins (as it joins torchrun's).

Tests and experiments that compare strategies run each rank's code in-process: Lightning would
otherwise start the other ranks by re-running the command line (``pytest``, or the script).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_as_rank(rank: int, world: int, port: int) -> None:
    """Set the environment Lightning reads a rank's place from; one thread per rank on a shared CPU."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)


def _as_rank(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    join_as_rank(rank, world, port)
    fn(rank, world, *args)


def run_local_ranks(fn: Callable[..., None], world: int, *args: Any) -> None:
    """``fn(rank, world, *args)`` in ``world`` forked processes (they inherit what is imported: a fresh
    interpreter spends ~15 s importing Lightning); raises if any rank fails."""
    mp.start_processes(_as_rank, args=(world, free_port(), fn, args), nprocs=world, join=True, start_method="fork")
