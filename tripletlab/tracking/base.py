"""The tracker protocol: the training loop's callbacks (:mod:`tripletlab.training.callbacks`,
which calls trackers guarded: their errors are warnings, their arguments redacted) with a
name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Tracker:
    """Where a run reports: ``on_train_begin()``, ``on_epoch_end(row)`` after each epoch,
    ``on_train_end(summary)`` with the final summary (also after a failure)."""

    name = "tracker"

    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        pass

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        pass
