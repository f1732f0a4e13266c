"""``tripletlab-index RUN_DIR [--gallery DIR | --split train] [--kind exact|hnsw|ivfpq]``.

Embeds a gallery with a run's model and stores a nearest-neighbour index of it in the run
folder's ``index/`` (:func:`tripletlab.reuse.index.build_index`), which
``tripletlab-embed --neighbours K`` then searches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tripletlab.cli.common import add_overrides, overrides_of, run_cli
from tripletlab.reuse.index import KINDS, build_index


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-index",
        description="Build a nearest-neighbour index (FAISS, the index extra) of a gallery "
        "embedded with a trained run's model; tripletlab-embed --neighbours K uses it.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (a training's output)")
    parser.add_argument(
        "--gallery", metavar="DIR", help="a folder of images (labels from their sub-folders)"
    )
    parser.add_argument(
        "--split",
        metavar="train|test",
        help="a split of the run's dataset (the default: train)",
    )
    parser.add_argument(
        "--kind",
        default="hnsw",
        metavar="|".join(KINDS),
        help="exact (every distance), hnsw (a graph; the default) or ivfpq (compressed codes)",
    )
    add_overrides(parser, "dataset.root=/moved/data")
    args = parser.parse_intermixed_args(argv)
    result = build_index(args.run_dir, args.gallery, args.split, args.kind, overrides_of(args))
    gallery = result["gallery"]
    what = gallery.get("folder") or f"the {gallery['split']} split of {gallery['dataset']}"
    print(
        f"indexed {result['count']} images of {what} ({result['kind']}, dimension "
        f"{result['dim']}) in {result['build_seconds']:.1f}s: {result['path']}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
