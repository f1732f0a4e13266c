"""The training loop's one callback protocol.

A callback is any object with some of these methods; the loop calls those it has:

- ``on_train_begin()``: once, before the first epoch of this session;
- ``on_epoch_end(row)``: after each epoch, once it is checkpointed and its metrics row
  (a dict: the metrics file's columns) is written;
- ``on_train_end(summary)``: once the run's summary is final, whatever ended it (a
  failure, Ctrl-C).

Trackers (:mod:`tripletlab.tracking`: TensorBoard, MLflow) are callbacks; so are a
notebook's or a test's objects passed to :func:`tripletlab.train`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Callback(Protocol):
    def on_epoch_end(self, row: Mapping[str, Any]) -> None: ...


class Callbacks:
    """Several callbacks called as one, in order."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.items = list(callbacks)

    def extend(self, callbacks: Iterable[Any]) -> None:
        self.items.extend(callbacks)

    def _call(self, method: str, *args: Any) -> None:
        for callback in self.items:
            hook = getattr(callback, method, None)
            if hook is not None:
                hook(*args)

    def on_train_begin(self) -> None:
        self._call("on_train_begin")

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self._call("on_epoch_end", row)

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._call("on_train_end", summary)
