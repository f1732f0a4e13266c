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
