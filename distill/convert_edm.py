"""``distill-convert-edm``: an EDM / EDM2 network pickle as a teacher directory, without running its code.

    distill-convert-edm edm-cifar10-32x32-uncond-vp.pkl teachers/edm-cifar10
    distill-train teacher=pretrained teacher.path=teachers/edm-cifar10 dataset=cifar10

Reads the pickle's ``ema`` network with an allow-list unpickler (``distill.teachers.edm_pickle``),
builds our native network from its recorded init kwargs, loads the weights strictly and writes
``teacher.json`` + ``model.safetensors``. ``teacher=edm teacher.path=<pkl>`` does the same on the
fly, caching the result under ``paths.cache``.
"""

from __future__ import annotations

import argparse

from distill.errors import friendly_errors
from distill.teachers.edm_checkpoint import convert_edm_pickle


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickle", help="an EDM / EDM2 .pkl (network-snapshot-*.pkl, edm-*.pkl, edm2-*.pkl)")
    parser.add_argument("out_dir", help="the teacher directory to write")
    args = parser.parse_args(argv)
    out = convert_edm_pickle(args.pickle, args.out_dir)
    print(f"wrote {out} (use it with teacher=pretrained teacher.path={out})")


if __name__ == "__main__":
    main()
