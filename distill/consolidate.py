"""``distill-consolidate``: an FSDP run's sharded checkpoint as one checkpoint file.

    distill-consolidate outputs/dmd2-digits-s0/<time>/checkpoints/last.ckpt
    distill-consolidate <run dir>/checkpoints/last.ckpt /elsewhere/dmd2.ckpt

An FSDP run (``hardware=fsdp_sim``, ``hardware=8xa100_fsdp``) checkpoints as a folder holding one
shard file per rank. ``distill-eval run_dir=``, ``distill-export`` and ``init_from=`` read that folder
as it is; this writes the whole weights and the run's metadata as a single file, to copy elsewhere or
load with ``torch.load(weights_only=True)``. Optimizer states are left out: resume from the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.errors import friendly_errors
from distill.lit.checkpoint_io import consolidate


def default_out(sharded: Path) -> Path:
    """``last.ckpt`` -> ``last.consolidated.pt`` beside it (not ``*.ckpt``: a resume never picks it)."""
    return sharded.with_name(f"{sharded.stem}.consolidated.pt")


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a sharded checkpoint folder (<run dir>/checkpoints/last.ckpt)")
    parser.add_argument("out", nargs="?", help="the file to write (default: <name>.consolidated.pt beside it)")
    args = parser.parse_args(argv)
    sharded = Path(args.checkpoint).expanduser()
    out = consolidate(sharded, Path(args.out).expanduser() if args.out else default_out(sharded))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
