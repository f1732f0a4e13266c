"""Errors caused by the user's input or configuration.

Anything raised as a :class:`TripletLabError` is shown to the user as one message, with no
traceback, and the process exits non-zero. Everything else is a bug and keeps its traceback.
"""

import errno


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


class StorageError(TripletLabError):
    """A file cannot be written: the disk is full, or the folder is read-only or not ours."""


# (errno, the text TensorFlow's own file errors carry, what it means for the user)
_STORAGE_FAULTS = (
    (errno.ENOSPC, "No space left on device", "the disk is full"),
    (errno.EDQUOT, "Disk quota exceeded", "the disk quota is used up"),
    (errno.EROFS, "Read-only file system", "the file system is read-only"),
    (errno.EACCES, "Permission denied", "permission is denied"),
)


def storage_fault(err: BaseException, where: object = None) -> StorageError | None:
    """A :class:`StorageError` for a disk-full or unwritable-folder error (an OSError, or
    TensorFlow's file errors, which carry the OS message as text); None for anything else."""
    number = getattr(err, "errno", None)
    text = str(err)
    for code, os_text, meaning in _STORAGE_FAULTS:
        if number == code or os_text in text:
            path = getattr(err, "filename", None) or where or "the run folder"
            fix = (
                "free some space"
                if code in (errno.ENOSPC, errno.EDQUOT)
                else "make the folder writable, or choose another one with hydra.run.dir=PATH"
            )
            return StorageError(
                f"cannot write {path}: {meaning} ({os_text}); {fix}, then rerun the same "
                "command: the run resumes from its last good checkpoint"
            )
    return None
