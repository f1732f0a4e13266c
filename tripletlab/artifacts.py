"""Everything a finished run leaves besides metrics: plots and the projector folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tripletlab.run_folder import RunFolder


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, the same for the same seed."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def write_views(
    folder: RunFolder,
    rows: list[dict],
    embeddings: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    class_names: Sequence[str],
    max_points: int,
) -> int:
    """``folder``'s plots/ (curves, a 2-D PCA view) and projector/ for one split's embeddings.

    Returns the number of points shown. The projector gets the very same images, in the same
    order, as its embeddings.
    """
    from tripletlab.plots import plot_curves, plot_embeddings_2d
    from tripletlab.projector import write_projector

    plots = folder.plots_dir
    plots.mkdir(parents=True, exist_ok=True)
    if rows:
        plot_curves(rows, plots)
    keep = subsample(len(embeddings), max_points)
    emb, lab = np.asarray(embeddings)[keep], np.asarray(labels)[keep]
    plot_embeddings_2d(
        emb, lab, class_names, plots / "embeddings_pca.png", max_points=max(len(keep), 1)
    )
    projector_dir = folder.projector_dir
    write_projector(projector_dir, emb, lab, class_names, np.asarray(images)[keep])
    mark_as_tensorboard_run(projector_dir, len(keep))
    return len(keep)


def mark_as_tensorboard_run(folder: Path, points: int) -> None:
    """Write one event file so that TensorBoard treats ``folder`` as a run.

    The projector plugin only looks into the logdir itself or into runs (folders holding
    event files), so without it ``tensorboard --logdir RUN_DIR`` (or a sweep folder) would
    show the scalars but not the embeddings.
    """
    import tensorflow as tf

    for old in Path(folder).glob("events.out.tfevents.*"):
        old.unlink()
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default(step=0):
        tf.summary.scalar("projector_points", float(points))
    writer.close()
