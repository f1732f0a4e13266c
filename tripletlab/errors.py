"""Errors caused by the user's input or configuration.

Anything raised as a :class:`TripletLabError` is shown to the user as one message, with no
traceback, and the process exits non-zero. Everything else is a bug and keeps its traceback.
"""


class TripletLabError(Exception):
    """A mistake the user can fix: bad data, a bad config value, a bad path."""


class DataError(TripletLabError):
    """A dataset is missing, corrupt or unusable."""


class ConfigError(TripletLabError):
    """A configuration value is invalid."""


class TrainingError(TripletLabError):
    """Training cannot go on (for example the loss became NaN)."""


def one_line(exc: BaseException | str) -> str:
    """An error's message on one line, without OmegaConf's full_key/... details."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith(("full_key:", "reference_type=", "object_type="))
    ]
    text = ""
    for line in lines:
        text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text or (type(exc).__name__ if isinstance(exc, BaseException) else "")
