"""The learning-rate schedule: linear warm-up, then cosine decay to 0 or constant.

Expected values are worked out by hand from the definition (README: "Adam with optional
warm-up and cosine decay"): optimizer step s (0-based; Keras' ``iterations`` before the
update) is update number s + 1, and

    warm-up  (s < W):  lr = peak * (s + 1) / W        (the W-th update reaches the peak)
    cosine   (s >= W): lr = peak / 2 * (1 + cos(pi * (s - W) / (T - W))), 0 from T on
    constant (s >= W): lr = peak
"""

from __future__ import annotations

import csv
import json
import math

import pytest

import tripletlab
from tests.helpers import TINY
from tripletlab.schedules import WarmupCosine

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

COS_PI_4 = 0.7071067811865476  # cos(pi / 4) = sqrt(2) / 2


def _lr(schedule, step: int) -> float:
    return float(schedule(step))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.5),  # 2 * 1/4
        (1, 1.0),  # 2 * 2/4
        (2, 1.5),
        (3, 2.0),  # the 4th update: the peak
        (4, 2.0),  # cosine starts at the peak: progress 0
        (6, 1.0 + COS_PI_4),  # progress 2/8: 2/2 * (1 + cos(pi/4))
        (8, 1.0),  # progress 1/2: half the peak
        (10, 1.0 - COS_PI_4),  # progress 3/4
        (12, 0.0),  # the end: 0
        (40, 0.0),  # and stays 0 past the end
    ],
)
def test_warmup_then_cosine(step, expected):
    schedule = WarmupCosine(peak=2.0, warmup_steps=4, total_steps=12, cosine=True)
    assert _lr(schedule, step) == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0), (12, 1.0), (1000, 1.0)]
)
def test_warmup_then_constant(step, expected):
    schedule = WarmupCosine(peak=1.0, warmup_steps=4, total_steps=12, cosine=False)
    assert _lr(schedule, step) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.1), (5, 0.05), (10, 0.0), (11, 0.0)])
def test_cosine_without_warmup_starts_at_the_peak(step, expected):
    schedule = WarmupCosine(peak=0.1, warmup_steps=0, total_steps=10, cosine=True)
    assert _lr(schedule, step) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("step", [0, 7, 10_000])
def test_constant_without_warmup_is_the_peak(step):
    schedule = WarmupCosine(peak=3e-4, warmup_steps=0, total_steps=100, cosine=False)
    assert _lr(schedule, step) == pytest.approx(3e-4, rel=1e-6)


def test_schedule_survives_a_keras_round_trip():
    """Saved models and checkpoints store the schedule by its config."""
    import keras

    schedule = WarmupCosine(peak=2.0, warmup_steps=4, total_steps=12, cosine=True)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, WarmupCosine)
    assert _lr(again, 2) == pytest.approx(1.5) and _lr(again, 8) == pytest.approx(1.0)


# ------------------------------------------------------------------- in a real run
PEAK = 0.004


@pytest.fixture(scope="module")
def warmup_run(tmp_path_factory):
    """3 epochs, the first 2 of them warm-up, cosine after; evaluated only at the end."""
    run_dir = tmp_path_factory.mktemp("warmup")
    cfg = tripletlab.compose(
        [
            *TINY,
            "dataset.max_train=240",
            "trainer.epochs=3",
            "trainer.warmup_epochs=2",
            "trainer.schedule=cosine",
            f"trainer.learning_rate={PEAK}",
            "trainer.mixed_precision=off",
            "trainer.deterministic=true",
            "eval.every=3",
        ]
    )
    tripletlab.train(cfg, run_dir)
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return run_dir, rows


def test_warmup_runs_in_training(warmup_run):
    """metrics.csv's learning_rate is the rate of the next update, after the epoch's S steps:
    S = steps per epoch (the step column after epoch 1), W = 2S, T = 3S."""
    run_dir, rows = warmup_run
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    s = int(rows[0]["step"])
    assert s > 1 and [int(r["step"]) for r in rows] == [s, 2 * s, 3 * s]
    lrs = [float(r["learning_rate"]) for r in rows]
    # After epoch 1, half-way through the warm-up: update S + 1 of W = 2S.
    assert lrs[0] == pytest.approx(PEAK * (s + 1) / (2 * s), rel=1e-5)
    assert lrs[0] < 0.6 * PEAK  # not the peak: without warm-up it would be PEAK * 3/4
    assert lrs[1] == pytest.approx(PEAK, rel=1e-5)  # warm-up done, cosine at progress 0
    assert lrs[2] == pytest.approx(0.0, abs=1e-9)  # the end of the cosine


def test_warmup_changes_the_first_updates(warmup_run, tmp_path):
    """The optimizer really uses the schedule: the same run without warm-up (and a constant
    rate) takes bigger first steps and ends epoch 1 with another loss."""
    _, rows = warmup_run
    cfg = tripletlab.compose(
        [
            *TINY,
            "dataset.max_train=240",
            "trainer.epochs=1",
            "trainer.warmup_epochs=0",
            "trainer.schedule=constant",
            f"trainer.learning_rate={PEAK}",
            "trainer.mixed_precision=off",
            "trainer.deterministic=true",
        ]
    )
    tripletlab.train(cfg, tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["learning_rate"]) == pytest.approx(PEAK, rel=1e-6)
    assert not math.isclose(float(row["loss"]), float(rows[0]["loss"]), rel_tol=1e-3)
