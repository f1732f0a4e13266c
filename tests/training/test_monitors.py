"""The training loop's monitors, each alone: NaN guard, collapse detector, TensorBoard scalars."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tripletlab.errors import TrainingError
from tripletlab.training.monitors import (
    CollapseDetector,
    NanGuard,
    is_collapsed,
)


@pytest.mark.parametrize(
    ("loss", "spread", "norm", "soft", "expected"),
    [
        (0.2, 1e-5, 1.0, False, True),  # at the margin, no spread: collapsed
        (0.2, 0.5, 1.0, False, False),  # at the margin but spread out: a hard batch
        (0.05, 1e-5, 1.0, False, False),  # learning
        (0.6931, 1e-6, 1e-6, True, True),  # soft margin: softplus(0), all at the origin
    ],
)
def test_collapse_detection(loss, spread, norm, soft, expected):
    assert is_collapsed(loss, spread, norm, margin=0.2, soft=soft) is expected


def _spread_and_norm(scale: float, jitter: float) -> tuple[float, float]:
    """A batch of 32 raw 8-d embeddings around one point at distance ``scale`` from the
    origin, each moved by ``jitter`` in a random direction; (spread, norm) as the train
    step measures them: mean distance to the batch mean, mean norm."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(32, 8))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    emb = scale * np.eye(8)[0] + jitter * (directions - directions.mean(axis=0))
    spread = np.linalg.norm(emb - emb.mean(axis=0), axis=1).mean()
    return float(spread), float(np.linalg.norm(emb, axis=1).mean())


@pytest.mark.parametrize(
    ("margin", "loss", "scale", "jitter", "expected"),
    [
        # Embeddings far from the origin (norm 100) squeezed to a blob 0.5 wide: 0.5% of the
        # norm, collapsed, though 0.5 is far above an absolute 0.01.
        (0.2, 0.2, 100.0, 0.5, True),
        # Near the origin (norm 0.5) a blob 0.008 wide is 1.6% of the norm: still a spread,
        # though below an absolute 0.01.
        (0.2, 0.2, 0.5, 0.008, False),
        # A wide margin (5): a loss 0.05 above it is within 2% of it, though above an
        # absolute 0.02.
        (5.0, 5.05, 1.0, 1e-4, True),
        # A narrow margin (0.05): a loss 0.01 above it is 20% off, though within an
        # absolute 0.02.
        (0.05, 0.06, 1.0, 1e-4, False),
    ],
)
def test_collapse_tolerances_are_relative_to_the_margin_and_the_norm(
    margin, loss, scale, jitter, expected
):
    spread, norm = _spread_and_norm(scale, jitter)
    assert spread == pytest.approx(jitter, rel=0.2) and norm == pytest.approx(scale, rel=0.01)
    detector = CollapseDetector(margin=margin, soft_margin=False, patience=1, epochs=10)
    row = {"epoch": 1, "loss": loss, "embedding_spread": spread, "embedding_norm": norm}
    assert detector.update(row) is expected


def _row(epoch, collapsed):
    spread = 1e-6 if collapsed else 0.5
    return {"epoch": epoch, "loss": 0.2, "embedding_spread": spread, "embedding_norm": 1.0}


def test_collapse_stops_after_patience_consecutive_epochs():
    detector = CollapseDetector(margin=0.2, soft_margin=False, patience=2, epochs=10)
    # A collapsed epoch, a recovery, then two in a row: only the second of those stops.
    verdicts = [
        detector.update(_row(e, c)) for e, c in [(1, True), (2, False), (3, True), (4, True)]
    ]
    assert verdicts == [False, False, False, True]


def test_collapse_on_the_last_epoch_stops_whatever_the_patience():
    detector = CollapseDetector(margin=0.2, soft_margin=False, patience=5, epochs=2)
    assert detector.update(_row(1, False)) is False
    assert detector.update(_row(2, True)) is True
    assert "learning_rate" in CollapseDetector.MESSAGE


class _Mean:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


@pytest.mark.parametrize(
    ("loss", "norm", "what"),
    [(math.nan, 1.0, "the loss became nan"), (0.1, math.inf, "norm became inf")],
)
def test_nan_guard_names_what_diverged_and_the_last_checkpoint(loss, norm, what):
    means = {"loss": _Mean(loss), "norm": _Mean(norm)}
    guard = NanGuard(means, lambda: "/run/checkpoints/ckpt-3")
    with pytest.raises(TrainingError, match=what) as info:
        guard.check(epoch=4, step=120)
    assert "epoch 4, by step 120" in str(info.value)
    assert "ckpt-3" in str(info.value)


def test_nan_guard_is_silent_on_finite_values():
    NanGuard({"loss": _Mean(0.3), "norm": _Mean(1.0)}, lambda: None).check(epoch=1, step=1)
