"""Rebuild a run's projector/ and plots/ from its saved model: ``tripletlab-visualize``.

``tripletlab-visualize RUN_DIR [key=value ...] [--max-points N] [--split test|train]``
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

import logging
from collections.abc import Sequence
from pathlib import Path

from tripletlab import artifacts
from tripletlab.errors import ConfigError
from tripletlab.inference import SPLITS, open_model
from tripletlab.reuse import run_config

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
    run_cfg = run_config.load_config(run_dir, overrides)
    cfg, folder = run_cfg.cfg, run_cfg.folder
    max_points = int(cfg.eval.max_points if max_points is None else max_points)
    folder.require_model()  # a clear error before TensorFlow is imported
    embedder = open_model(folder, cfg)
    data = run_config.load_data(run_cfg, embedder.input_shape)
    images, labels = run_config.split_arrays(data, split)
    embeddings = embedder.embed(images)
    shown = artifacts.write_views(
        folder,
        folder.read_metrics(),
        embeddings,
        labels,
        images,
        data.class_names,
        max_points,
        name=f"{data.name} {split}",
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
