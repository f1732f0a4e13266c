"""The tracker protocol: the training loop's callbacks (:mod:`tripletlab.training.callbacks`)
with a name, and :class:`Guarded`, which turns a tracker's errors into warnings and redacts
what a tracker is given (:func:`tripletlab.credentials.redact_tree`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tripletlab.credentials import redact_tree

log = logging.getLogger("tripletlab")


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


class Guarded:
    """A tracker whose errors are warnings: the first one switches it off. What it is given
    (rows, the summary with its config and error) is redacted on the way in."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.failed = False
        self.name = getattr(tracker, "name", type(tracker).__name__)

    def _call(self, what: str, *args: Any) -> None:
        hook = getattr(self.tracker, what, None)
        if self.failed or hook is None:  # a tracker may have any of the hooks
            return
        args = redact_tree(args, f"the {self.name} tracker")
        try:
            hook(*args)
        except Exception as err:  # noqa: BLE001 - a tracker never fails the run
            self.failed = True
            log.warning(
                "%s failed (%s: %s); the run goes on without it",
                self.name,
                type(err).__name__,
                err,
            )

    def on_train_begin(self) -> None:
        self._call("on_train_begin")

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self._call("on_epoch_end", row)

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._call("on_train_end", summary)
