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
    name: str = "embedding",
) -> int:
    """``folder``'s plots/ (curves, a 2-D PCA view) and projector for one split's embeddings.

    Returns the number of points shown. The projector gets the very same images, in the same
    order, as its embeddings, and lists them as ``name`` (the dataset and split: "digits
    test"). It is written into the run's TensorBoard folder, so that each run is one
    TensorBoard run: scalars, HParams and projector.
    """
    from tripletlab.plots import plot_curves, plot_embeddings_2d
    from tripletlab.tracking.projector import write_projector

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
    # Index first: streamed images (ImageFiles) then decode only the points shown.
    write_projector(
        projector_dir, emb, lab, class_names, np.asarray(images[keep]), tensor_name=name
    )
    mark_as_tensorboard_run(projector_dir)
    return len(keep)


def mark_as_tensorboard_run(folder: Path) -> None:
    """Make sure ``folder`` holds an event file, so that TensorBoard treats it as a run.

    The projector plugin only looks into the logdir itself or into runs (folders holding
    event files). Training's scalars are one already; a folder without them gets an empty
    event file. Nothing is deleted: the folder's events are the run's scalars.
    """
    import tensorflow as tf

    if any(Path(folder).glob("events.out.tfevents.*")):
        return
    tf.summary.create_file_writer(str(folder)).close()
