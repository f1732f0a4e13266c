"""The training loop's one callback protocol, and the one fan-out of its hooks.

A callback is any object with some of these methods; :class:`Callbacks` calls those it has:

- ``on_train_begin()``: once, before the first epoch of this session;
- ``on_epoch_end(row)``: after each epoch, once it is checkpointed and its metrics row
  (a dict: the metrics file's columns) is written;
- ``on_train_end(summary)``: once the run's summary is final, whatever ended it (a
  failure, Ctrl-C).

Trackers (:mod:`tripletlab.tracking`: TensorBoard, MLflow, a plugin's) are callbacks added
*guarded*: a tracker never fails the run (its first error is a warning and switches it
off) and what it is given is redacted first (:func:`tripletlab.credentials.redact_tree`).
A notebook's or a test's objects passed to :func:`tripletlab.train` are called as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tripletlab")


@dataclass
class _Entry:
    callback: Any
    guarded: bool
    failed: bool = False

    @property
    def name(self) -> str:
        try:  # a tracker's own ``name`` property may raise too
            return str(getattr(self.callback, "name", type(self.callback).__name__))
        except Exception:  # noqa: BLE001
            return type(self.callback).__name__

    def call(self, hook: str, args: tuple) -> None:
        method = getattr(self.callback, hook, None)
        if method is None or self.failed:
            return
        if not self.guarded:
            method(*args)
            return
        from tripletlab.credentials import redact_tree
        from tripletlab.registry import describe

        try:
            method(*redact_tree(args, f"the {self.name} tracker"))
        except KeyboardInterrupt:  # Ctrl-C is the user's, not the tracker's
            raise
        except BaseException as err:  # noqa: BLE001 - a tracker never fails the run
            self.failed = True
            log.warning("%s failed (%s); the run goes on without it", self.name, describe(err))


class Callbacks:
    """Several callbacks called as one, in order."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.entries: list[_Entry] = []
        self.extend(callbacks)

    @property
    def items(self) -> list[Any]:
        return [entry.callback for entry in self.entries]

    def extend(self, callbacks: Iterable[Any], guarded: bool = False) -> None:
        """Add ``callbacks``; ``guarded``: trackers (errors are warnings, arguments redacted)."""
        self.entries.extend(_Entry(c, guarded) for c in callbacks)

    def _call(self, hook: str, *args: Any) -> None:
        for entry in self.entries:
            entry.call(hook, args)

    def on_train_begin(self) -> None:
        self._call("on_train_begin")

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self._call("on_epoch_end", row)

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._call("on_train_end", summary)
