"""``tripletlab-visualize RUN_DIR [key=value ...] [--max-points N] [--split train]``.

Rebuilds a run's ``projector/`` and ``plots/`` from its saved model
(:func:`tripletlab.reuse.visualize.visualize_run`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tripletlab.cli.common import add_overrides, overrides_of, run_cli
from tripletlab.inference import SPLITS
from tripletlab.reuse.visualize import visualize_run


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-visualize",
        description="Rebuild a run's TensorBoard projector and plots from its saved model.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (a training's output)")
    add_overrides(parser, "dataset=image_folder dataset.root=/my/images")
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="points in the projector and the PCA plot (default: eval.max_points; 0: all)",
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    args = parser.parse_intermixed_args(argv)
    out = visualize_run(args.run_dir, overrides_of(args), args.split, args.max_points)
    print(
        f"{out['dataset']} {out['split']} split: {out['points']} of {out['of']} points\n"
        f"wrote {out['projector']} and {out['plots']}\n"
        f"view: tensorboard --logdir {out['run_dir']}  (PROJECTOR tab)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
