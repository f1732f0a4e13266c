"""Rebuild a run's projector/ and plots/ from its saved model: ``python -m tripletlab.visualize``.

``python -m tripletlab.visualize RUN_DIR [--max-points N] [--split test|train] [overrides]``
embeds the chosen split with the saved model (the same path as training's evaluation) and
writes, in place of what training left:

- ``projector/``: TensorBoard's Embedding Projector (checkpoint, projector_config.pbtxt,
  metadata.tsv, sprite.png in the same order, vectors.tsv), marked as a TensorBoard run so
  that ``tensorboard --logdir RUN_DIR`` shows it;
- ``plots/``: the loss and metric curves (from the metrics rows) and the 2-D PCA view of the
  embeddings.

With the defaults (test split, ``eval.max_points`` points) it writes what training wrote.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tripletlab import artifacts, reuse, rundir
from tripletlab.errors import ConfigError
from tripletlab.inference import SPLITS, open_model

log = logging.getLogger("tripletlab")


def visualize_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    max_points: int | None = None,
) -> dict:
    """Rebuild projector/ and plots/ of the run in ``run_dir``; returns what was written."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not valid; choose one of: test, train")
    if max_points is not None and max_points < 0:
        raise ConfigError(f"--max-points {max_points} must be >= 0 (0: every point)")
    run_cfg = reuse.load_config(run_dir, overrides)
    cfg, folder = run_cfg.cfg, run_cfg.folder
    max_points = int(cfg.eval.max_points if max_points is None else max_points)
    folder.require_model()  # a clear error before TensorFlow is imported
    embedder = open_model(folder, cfg)
    data = reuse.load_data(run_cfg, embedder.input_shape)
    images, labels = reuse.split_arrays(data, split)
    embeddings = embedder.embed(images)
    shown = artifacts.write_views(
        folder,
        folder.read_metrics(),
        embeddings,
        labels,
        images,
        data.class_names,
        max_points,
    )
    return {
        "run_dir": str(folder.path),
        "dataset": data.name,
        "split": split,
        "points": shown,
        "of": len(embeddings),
        "projector": str(folder.projector_dir),
        "plots": str(folder.plots_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.visualize",
        description="Rebuild a run's TensorBoard projector and plots from its saved model.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (run.py's output)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="changes to the run's config, e.g. dataset=image_folder dataset.root=/my/images",
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="points in the projector and the PCA plot (default: eval.max_points; 0: all)",
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    args = parser.parse_intermixed_args(argv)
    out = visualize_run(args.run_dir, args.overrides, args.split, args.max_points)
    print(
        f"{out['dataset']} {out['split']} split: {out['points']} of {out['of']} points\n"
        f"wrote {out['projector']} and {out['plots']}\n"
        f"view: tensorboard --logdir {out['run_dir']}  (PROJECTOR tab)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(rundir.run_cli(main))
