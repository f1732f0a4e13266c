"""Small parts the training loop calls each step or epoch; each can be used and tested alone.

- :class:`NanGuard` stops training when the loss or the embeddings stop being finite.
- :class:`CollapseDetector` notices epochs whose embeddings all sit at one point.
- :class:`ProgressBar` draws Keras' progress bar on a terminal.
- :func:`log_epoch` writes an epoch's one-line summary to the log.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from tripletlab.errors import TrainingError
from tripletlab.run_folder import as_float

log = logging.getLogger("tripletlab")

# Steps between two reads of the running means (NaN check, progress bar): reading them
# synchronises with the device, so not every step.
CHECK_EVERY = 20

# A collapsed epoch: the loss sits at its value for identical embeddings (the margin, or
# softplus(0) = ln 2 with a soft margin) while the batch's embeddings have almost no spread.
COLLAPSE_LOSS_TOLERANCE = 0.02  # relative to that value
COLLAPSE_SPREAD_RATIO = 0.01  # spread / norm
COLLAPSE_ADVICE = (
    "Try a lower trainer.learning_rate, model.l2_normalize=true, sampler=pk, or mining=semi_hard."
)


class NanGuard:
    """Raise TrainingError once the running mean loss or embedding norm is NaN or Inf.

    The running means turn non-finite with the first bad step, so reading two scalars every
    :data:`CHECK_EVERY` steps catches it without a sync per step. The norm catches
    non-finite embeddings, which can leave a finite loss (comparisons with NaN are all
    False, so nothing is mined).
    """

    def __init__(self, means: Mapping[str, Any], last_checkpoint):
        self.means = means
        self.last_checkpoint = last_checkpoint  # () -> str | None

    def check(self, epoch: int, step: int) -> None:
        loss = float(self.means["loss"].result())
        norm = float(self.means["norm"].result())
        if math.isfinite(loss) and math.isfinite(norm):
            return
        what, value = ("loss", loss) if not math.isfinite(loss) else ("embeddings' norm", norm)
        raise TrainingError(
            f"training diverged in epoch {epoch}, by step {step}: the {what} became {value}; "
            f"training stopped and the last good checkpoint "
            f"({self.last_checkpoint() or 'none yet'}) is kept. "
            "Lower trainer.learning_rate or use model.l2_normalize=true."
        )


def is_collapsed(loss: float, spread: float, norm: float, margin: float, soft: bool) -> bool:
    """Whether an epoch's mean loss, embedding spread and norm look like a collapse."""
    at = math.log(2.0) if soft else margin
    if at <= 0:
        return False
    near_margin = abs(loss - at) <= COLLAPSE_LOSS_TOLERANCE * at
    return near_margin and spread <= COLLAPSE_SPREAD_RATIO * max(norm, 1e-2)


class CollapseDetector:
    """Counts consecutive collapsed epochs; ``stop`` once ``patience`` of them (or the last
    epoch) collapsed."""

    MESSAGE = (
        "training collapsed: every embedding moved to the same point and the loss sits at "
        "the margin. " + COLLAPSE_ADVICE
    )

    def __init__(self, margin: float, soft_margin: bool, patience: int, epochs: int):
        self.margin = margin
        self.soft_margin = soft_margin
        self.patience = max(int(patience), 1)
        self.epochs = epochs
        self.streak = 0

    def update(self, row: Mapping[str, Any]) -> bool:
        """Record one epoch's row; True when training should stop as collapsed."""
        collapsed = is_collapsed(
            row["loss"],
            row["embedding_spread"],
            row["embedding_norm"],
            self.margin,
            self.soft_margin,
        )
        if not collapsed:
            self.streak = 0
            return False
        self.streak += 1
        log.warning(
            "epoch %d looks collapsed: loss %.4f sits at the margin and the embeddings have "
            "almost no spread (%.2e). %s",
            row["epoch"],
            row["loss"],
            row["embedding_spread"],
            COLLAPSE_ADVICE,
        )
        return self.streak >= self.patience or row["epoch"] == self.epochs


class ProgressBar:
    """Keras' progress bar with loss, fraction and images/s; silent unless ``mode`` asks.

    ``mode``: "bar", "log" (never a bar) or "auto" (a bar on a terminal).
    """

    def __init__(self, steps: int, batch_size: int, mode: str = "auto"):
        self.enabled = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
        self.steps = steps
        self.batch_size = batch_size
        self._bar = None
        self._t0 = 0.0

    def start(self) -> None:
        if self.enabled:
            import keras

            self._bar = keras.utils.Progbar(
                self.steps, stateful_metrics=["loss", "fraction", "img/s"]
            )
        self._t0 = time.perf_counter()

    def update(self, done: int, means: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        rate = done * self.batch_size / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.update(
            done,
            values=[
                ("loss", float(means["loss"].result())),
                ("fraction", float(means["fraction"].result())),
                ("img/s", rate),
            ],
        )


def log_epoch(row: Mapping[str, Any], epochs: int) -> None:
    """One line per epoch: loss, fraction, the metrics evaluated, time and speed."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("loss", "fraction_positive", "precision_at_1", "map_at_r", "knn_accuracy"):
        value = as_float(row.get(key))
        if not math.isnan(value):
            parts.append(f"{key} {value:.4f}")
    parts.append(f"{row['epoch_seconds']:.1f}s ({row['images_per_second']:.0f} img/s)")
    if "eval_seconds" in row:
        parts.append(f"eval {row['eval_seconds']:.1f}s ({row.get('eval_queries', '?')} queries)")
    log.info(", ".join(parts))
