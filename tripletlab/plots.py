"""Training curves, 2-D embedding plots and the summary's comparison, saved as PNG.

Figures are built as ``matplotlib.figure.Figure`` objects with an Agg canvas, never through
``pyplot``: pyplot keeps global state (open figures, the backend) that leaks between calls and
threads, and needs no display here anyway. Files are written atomically.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tripletlab.errors import DataError
from tripletlab.io_utils import atomic_write_bytes
from tripletlab.run_folder import as_float

__all__ = ["comparison_figure", "plot_comparison", "plot_curves", "plot_embeddings_2d"]

_RECALL_RE = re.compile(r"recall_at_(\d+)")
# Beyond this many classes a legend hides the plot; the rest are summarised in one entry.
_MAX_LEGEND = 20


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG bytes, then write them atomically to ``path``."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([as_float(row.get(key)) for row in rows], dtype=np.float64)


def _plot_series(ax, x: np.ndarray, y: np.ndarray, label: str, **style: Any) -> bool:
    """Plot the finite points of y against x; returns False when there are none.

    NaN points (epochs without evaluation) are dropped rather than plotted as gaps, so
    metrics evaluated every few epochs still draw as connected lines.
    """
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return False
    ax.plot(x[keep], y[keep], **{"marker": "o", "markersize": 3, **style}, label=label)
    return True


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_curves(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss.png`` and ``metrics.png`` from the run's metrics rows into ``out_dir``.

    Args:
        rows: one mapping per epoch with ``epoch`` and any of ``loss``,
            ``fraction_positive``, ``embedding_norm``, ``precision_at_1``, ``recall_at_{k}``,
            ``map_at_r``, ``knn_accuracy``. Values may be numbers or strings (as read back by
            ``csv.DictReader``); empty, missing or NaN values are skipped. A row without an
            epoch uses its position (1-based).
        out_dir: created if missing.

    Returns:
        ``[out_dir/loss.png, out_dir/metrics.png]``; both are written even with no data.
    """
    out = Path(out_dir)
    epochs = _column(rows, "epoch")
    fallback = np.arange(1, len(rows) + 1, dtype=np.float64)
    epochs = np.where(np.isfinite(epochs), epochs, fallback)
    order = np.argsort(epochs, kind="stable")
    epochs = epochs[order]

    def col(key: str) -> np.ndarray:
        return _column(rows, key)[order]

    # loss.png: one panel per training statistic, sharing the epoch axis.
    panels = [("loss", "loss"), ("fraction_positive", "fraction of positive triplets")]
    if np.isfinite(col("embedding_norm")).any():
        panels.append(("embedding_norm", "mean embedding norm"))
    fig = Figure(figsize=(7, 2.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, title) in zip(axes, panels, strict=True):
        if not _plot_series(ax, epochs, col(key), key):
            _no_data(ax, f"no {key} values")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.suptitle("Training")
    loss_path = _save(fig, out / "loss.png")

    # metrics.png: every retrieval metric present, on a common [0, 1] axis.
    keys = ["precision_at_1"]
    recalls = {key for row in rows for key in row if _RECALL_RE.fullmatch(str(key))}
    keys += sorted(recalls, key=lambda key: int(_RECALL_RE.fullmatch(key).group(1)))
    keys += ["map_at_r", "knn_accuracy"]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    # precision@1 equals recall@1 by definition: a thick dotted line keeps both visible.
    styles = {"precision_at_1": {"linestyle": ":", "linewidth": 3, "marker": None}}
    plotted = [_plot_series(ax, epochs, col(key), key, **styles.get(key, {})) for key in keys]
    if any(plotted):
        ax.legend(loc="lower right", fontsize="small")
    else:
        _no_data(ax, "no evaluation yet")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.set_title("Retrieval metrics")
    metrics_path = _save(fig, out / "metrics.png")
    return [loss_path, metrics_path]


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """Project [n, D] onto its first two principal components -> [n, 2].

    Missing components (D = 1, or n < 3 points, which span at most n - 1 directions) are
    zeros. Signs are fixed (largest loading positive) so the picture is reproducible.
    """
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # vt: [min(n, D), D]
    vt = vt[:2]
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((len(x), 2))
    coords[:, : len(vt)] = x @ vt.T
    return coords


def plot_embeddings_2d(
    embeddings: Any,
    labels: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Scatter the embeddings [N, D] in their first two principal components, by class.

    Args:
        embeddings: [N, D] numbers (numpy or tf).
        labels: [N] integer class ids in ``[0, len(class_names))``.
        class_names: legend text per class id.
        path: output PNG; its folder is created if missing.
        max_points: a random subset of this many points is drawn (the same for a given
            seed) when N is larger; PCA is fitted on the drawn points.
        seed: seed of that subset.

    Returns:
        ``path`` as a Path.
    """
    emb = np.asarray(embeddings)
    if emb.dtype.name == "bfloat16":  # numpy has no bfloat16 arithmetic
        emb = emb.astype(np.float32)
    lab = np.asarray(labels)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise DataError(f"embeddings must have shape [N, D] with N, D > 0, got {emb.shape}")
    if lab.shape != (emb.shape[0],) or lab.dtype.kind not in "iu":
        raise DataError(f"labels must be {emb.shape[0]} integers, got {lab.dtype} {lab.shape}")
    if max_points < 1:
        raise DataError(f"max_points must be positive, got {max_points}")
    bad = (lab < 0) | (lab >= len(class_names))
    if bad.any():
        raise DataError(f"label {lab[bad][0]} has no class name ({len(class_names)} names)")
    emb = emb.astype(np.float64)
    if not np.isfinite(emb).all():
        raise DataError("embeddings contain NaN or inf")

    n = emb.shape[0]
    if n > max_points:
        # Sorted, so the subset keeps the input order (and draw order) of the points.
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        emb, lab = emb[keep], lab[keep]
    coords = _pca_2d(emb)

    classes = np.unique(lab)
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.subplots()
    cmap_name = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
    cmap = colormaps[cmap_name]
    for i, c in enumerate(classes):
        pts = coords[lab == c]
        color = cmap(i % cmap.N) if cmap.N < 256 else cmap(i / max(len(classes) - 1, 1))
        legend = str(class_names[c]) if i < _MAX_LEGEND else None
        ax.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.7, color=color, label=legend)
    if len(classes) > _MAX_LEGEND:
        ax.scatter([], [], s=0, label=f"... {len(classes) - _MAX_LEGEND} more classes")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", markerscale=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    shown = f"{len(coords)} of {n} points" if n > len(coords) else f"{n} points"
    ax.set_title(f"Embeddings, PCA to 2-D ({shown})")
    return _save(fig, path)


def plot_comparison(
    groups: Any,
    metric: str,
    path: str | os.PathLike,
    reference: int = 0,
    ref_name: str = "best",
) -> Path:
    """Write summary.png (:func:`comparison_figure`) to ``path``."""
    return _save(comparison_figure(groups, metric, reference, ref_name), path)


def comparison_figure(groups: Any, metric: str, reference: int = 0, ref_name: str = "best"):
    """summary.png's figure: each configuration's mean ``metric`` as a point with its
    Student-t 95% interval, one row per configuration (best on top), on an axis fitted to
    the intervals (not 0 to 1, where 0.939 and 0.958 look alike); a dashed line at the
    reference's mean.

    Args:
        groups: :func:`tripletlab.summarize.group_rows`'s frame (model, mining, label, and
            ``<metric>.n`` / ``.mean`` / ``.low`` / ``.high``).
        reference: the position in ``groups`` of the configuration compared with.
        ref_name: what the reference is ("best" or "baseline"), for the axis label.
    """
    from tripletlab.registry import STRATEGIES

    strategies = STRATEGIES.names()
    rows = groups.to_dict("records")
    fig = Figure(figsize=(9.0, 1.6 + 0.42 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"]
    seen: set[str] = set()
    # A mean that could not be computed (no value, or an overflow: NaN) is drawn as none.
    shown = [r[f"{metric}.n"] > 0 and np.isfinite(r[f"{metric}.mean"]) for r in rows]
    finite = [r for r, ok in zip(rows, shown, strict=True) if ok]
    lows = [r[f"{metric}.low"] if r[f"{metric}.n"] > 1 else r[f"{metric}.mean"] for r in finite]
    highs = [r[f"{metric}.high"] if r[f"{metric}.n"] > 1 else r[f"{metric}.mean"] for r in finite]
    left = min(lows) if lows else 0.0
    for y, row in enumerate(rows):
        mining = str(row["mining"]) if isinstance(row["mining"], str) else "?"
        color = colors((strategies.index(mining) if mining in strategies else 9) % 10)
        n, mean = row[f"{metric}.n"], row[f"{metric}.mean"]
        if not shown[y]:
            ax.annotate("no value", (left, y), fontsize=8, color="gray", va="center")
            continue
        if mining not in seen:  # one legend entry per strategy, a filled point
            ax.plot([], [], "o", color=color, label=mining)
        seen.add(mining)
        if n > 1:
            err = [[mean - row[f"{metric}.low"]], [row[f"{metric}.high"] - mean]]
            ax.errorbar(mean, y, xerr=err, fmt="o", color=color, capsize=4)
        else:  # one seed: a hollow point, no interval
            ax.plot(mean, y, "o", mfc="white", color=color)
        right = row[f"{metric}.high"] if n > 1 else mean
        ax.annotate(
            f"{mean:.4f} (n={n})",
            (right, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    if finite:
        span = max(highs) - min(lows)
        pad = span * 0.08 if span > 0 else max(abs(max(highs)) * 0.01, 0.005)
        ax.set_xlim(min(lows) - pad, max(highs) + 3.5 * pad)  # room for the labels
        if shown[reference]:
            ax.axvline(rows[reference][f"{metric}.mean"], color="gray", linestyle="--", linewidth=1)
    labels = []
    for row in rows:
        parts = [str(row["model"]), str(row["mining"]), str(row["label"] or "")]
        text = " ".join(p for p in parts if p and p != "None")
        labels.append(text if len(text) <= 60 else text[:57] + "...")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the best on top
    ax.set_xlabel(f"{metric} (mean and 95% interval, Student t; dashed: the {ref_name})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{metric} per configuration over seeds (hollow: one seed, no interval)")
    if seen:
        ax.legend(title="mining", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
