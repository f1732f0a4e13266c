"""Tests for tripletlab.plots: valid PNGs for normal and degenerate inputs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from tripletlab.errors import DataError
from tripletlab.plots import _pca_2d, plot_curves, plot_embeddings_2d


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()  # raises on a truncated or corrupt file
    # Only the finished file is left: no temporary files beside it.
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _csv_rows():
    """Rows as csv.DictReader returns them: strings, empty where no evaluation ran."""
    rows = []
    for epoch in range(1, 6):
        evaluated = epoch % 2 == 1
        rows.append(
            {
                "epoch": str(epoch),
                "loss": str(1.0 / epoch),
                "fraction_positive": str(0.5 / epoch),
                "embedding_norm": "1.0",
                "precision_at_1": str(0.1 * epoch) if evaluated else "",
                "recall_at_1": str(0.1 * epoch) if evaluated else "",
                "recall_at_2": str(0.12 * epoch) if evaluated else "",
                "recall_at_4": str(0.15 * epoch) if evaluated else "",
                "recall_at_8": str(0.18 * epoch) if evaluated else "",
                "map_at_r": str(0.05 * epoch) if evaluated else "nan",
                "knn_accuracy": "",
            }
        )
    return rows


def test_plot_curves_from_csv_rows(tmp_path):
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    paths = plot_curves(_csv_rows(), tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "metrics.png"]
    for p in paths:
        _assert_png(p)
    # No pyplot global state: the module is not even imported by plotting.
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded


@pytest.mark.parametrize(
    "rows",
    [
        [{"epoch": 1, "loss": 0.7, "fraction_positive": 0.3}],  # one row, no metrics at all
        [{"epoch": 1, "loss": float("nan"), "map_at_r": None}],  # NaN / None everywhere
        [{"loss": "0.5"}, {"loss": "0.4", "recall_at_16": "0.9"}],  # no epochs; an odd k
        [],  # nothing yet
    ],
)
def test_plot_curves_edge_cases(tmp_path, rows):
    for p in plot_curves(rows, tmp_path):
        _assert_png(p)


def test_plot_embeddings_2d(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    emb = rng.normal(size=(60, 8)) + 4 * labels[:, None]
    path = plot_embeddings_2d(emb, labels, ["a", "b", "c"], tmp_path / "sub" / "emb.png")
    assert path == tmp_path / "sub" / "emb.png"
    _assert_png(path)


def test_subsampling_is_deterministic(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 25, size=500)  # more classes than the legend shows
    emb = rng.normal(size=(500, 4)).astype(np.float32)
    names = [f"class {i}" for i in range(25)]
    a = plot_embeddings_2d(emb, labels, names, tmp_path / "a.png", max_points=100, seed=3)
    b = plot_embeddings_2d(emb, labels, names, tmp_path / "b.png", max_points=100, seed=3)
    _assert_png(a)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    ("emb", "labels"),
    [
        (np.array([[0.0], [1.0], [3.0], [2.0]]), [0, 1, 0, 1]),  # D = 1
        (np.array([[1.0, 2.0]]), [0]),  # N = 1
        (np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), [0, 1]),  # N = 2
        (np.zeros((5, 3)), [0, 0, 1, 1, 1]),  # all points equal
    ],
)
def test_plot_embeddings_2d_degenerate(tmp_path, emb, labels):
    _assert_png(plot_embeddings_2d(emb, np.array(labels), ["x", "y"], tmp_path / "e.png"))


def test_pca_finds_the_main_direction():
    # Points on a line in 3-D: all the spread is on PC 1, none on PC 2.
    t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    x = t[:, None] * np.array([[1.0, 2.0, 2.0]]) / 3.0 + 5.0
    coords = _pca_2d(x)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(t), atol=1e-12)
    np.testing.assert_allclose(coords[:, 1], 0.0, atol=1e-12)
    assert _pca_2d(np.array([[4.0]])).tolist() == [[0.0, 0.0]]


def test_plot_embeddings_2d_bad_input(tmp_path):
    with pytest.raises(DataError):
        plot_embeddings_2d(np.zeros((3, 2)), np.array([0, 1, 2]), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_embeddings_2d(np.zeros((3, 2)), np.array([0, 1]), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_embeddings_2d(np.full((2, 2), np.nan), np.array([0, 1]), ["a", "b"], tmp_path / "x")
