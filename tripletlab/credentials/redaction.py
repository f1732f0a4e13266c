"""Redaction: every writer of text out of the process passes through :func:`redact`; a
credential that slipped past the gate is written as ``***`` and one warning names the
writer it reached (files, log records, the terminal, tracebacks, trackers)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tripletlab.credentials.detection import MASK, find_secret, mask

log = logging.getLogger("tripletlab")

_warned: set[str] = set()
_local = threading.local()


def redact(text: str, where: str | None = None) -> str:
    """``text`` with every credential masked (:func:`mask`). When one was found and
    ``where`` names the writer (a file, "the terminal", "MLflow params"), one warning per
    writer says so: the gate refuses credentials in the config, so this one came another
    way (an environment variable, a library's message) and should be fixed at its source."""
    if not isinstance(text, str):
        return text
    masked = mask(text)
    if masked != text and where is not None:
        _warn(where, text)
    return masked


def _warn(where: str, text: str) -> None:
    if where in _warned or getattr(_local, "warning", False):
        return
    _warned.add(where)
    _local.warning = True
    try:
        log.warning(
            "a credential reached %s and was written masked (%s); it did not come from the "
            "config, which is checked before the run: give it through the environment",
            where,
            find_secret(text) or MASK,
        )
    finally:
        _local.warning = False


def redact_tree(obj: Any, where: str | None = None) -> Any:
    """A plain structure (dicts, lists, strings...) with every string, key or value,
    redacted."""
    if isinstance(obj, str):
        return redact(obj, where)
    if isinstance(obj, Mapping):
        return {redact_tree(k, where): redact_tree(v, where) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_tree(v, where) for v in obj)
    return obj


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
        return
    masked = redact(message, f"a log message ({record.name})")
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        masked = redact(text, f"a logged traceback ({record.name})")
        if masked != text:
            record.exc_text = masked
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Every log record of the process, whatever its logger or handler (run.log, the
    terminal), is redacted when it is made. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "tripletlab_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        _redact_record(record)
        return record

    factory.tripletlab_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class RedactingStream:
    """A text stream that redacts what is written to it (the rest is the wrapped stream's)."""

    def __init__(self, stream: Any, where: str):
        self._stream = stream
        self._where = where

    def write(self, text: str) -> int:
        self._stream.write(redact(text, self._where))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _excepthook(kind: type, value: BaseException, tb: Any) -> None:
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(redact(text, "a traceback"))


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """Within the block, what is printed to stdout and stderr is redacted, and so is every
    log record (:func:`install_log_redaction`) and the traceback of a bug that ends the
    process."""
    install_log_redaction()
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout, "the standard output")
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr, "the standard error")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
