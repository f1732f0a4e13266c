"""Atomic file writes.

Every writer puts the content into a temporary file in the destination folder and then
``os.replace``-s it onto the final name, so a reader (TensorBoard, a crashed run being resumed,
a person tailing a CSV file) sees either the old file or the new one, never half of one.
The temporary file lives in the same folder because ``os.replace`` is only atomic within one
filesystem.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tripletlab.credentials import redact

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "is_hidden",
    "part_owner",
    "read_yaml",
    "redact_file",
    "this_host",
    "unwritable_folder",
]

_PART_NAME = re.compile(r"\..+@([A-Za-z0-9_]+)-(\d+)-[0-9a-f]+\.part.*")


def this_host() -> str:
    """This machine's name as temporary file names spell it (letters, digits and _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def part_owner(path: str | os.PathLike) -> tuple[str, int] | None:
    """(host, pid) of the process that writes the temporary file ``path`` (an
    :func:`atomic_path`), or None when the name is not one of those."""
    match = _PART_NAME.fullmatch(Path(path).name)
    return (match.group(1), int(match.group(2))) if match else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it becomes ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (a .gz stays readable as .gz while it is
    checked). Files get the usual permissions (0666 less the umask), not mkstemp's private
    0600: run and data folders are often shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name, so two writers of the same path never share a temporary file; it says
    # which process writes it, so that one left by a killed process can be told apart
    # (:func:`part_owner`, tripletlab.data.download.remove_stale_parts).
    owner = f"{this_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    room = len(owner) + len(os.fsencode(path.suffix)) + 7  # ".", "@" and ".part"
    tmp = path.with_name(f".{_short(path.name, room)}@{owner}.part{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)  # the content reaches the disk before the name does
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        # Never leave the temporary file behind, whatever went wrong (even KeyboardInterrupt).
        tmp.unlink(missing_ok=True)


# Linux's limit for one name, in bytes.
NAME_MAX = 255


def _short(name: str, room: int) -> str:
    """``name``, or its start and a hash of it, in at most NAME_MAX - ``room`` bytes: a name
    near the limit is valid, and its temporary file's longer name must be too."""
    data = os.fsencode(name)
    if len(data) <= NAME_MAX - room:
        return name
    head = os.fsdecode(data[: max(0, NAME_MAX - room - 11)])
    return f"{head}~{hashlib.sha1(data).hexdigest()[:10]}"


def _fsync(path: Path) -> None:
    """fsync a file or a folder, if it exists (a writer may have written nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why the folder ``path`` (which need not exist yet) cannot be made and written, or None.

    Its nearest existing ancestor must be a folder this process may write (a read-only
    file system answers no, for root too).
    """
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only or not writable by this user"
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders. Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        # Without fsync a power loss right after the rename can leave an empty file.
        os.fsync(f.fileno())
    return path


# A file name's bytes that are not UTF-8 reach Python as surrogates (U+DC80-U+DCFF, PEP 383);
# UTF-8 cannot hold them. Every text tripletlab writes or prints encodes with this error
# handler: such a byte is written as the escape \xNN, any other unencodable character as
# \uNNNN, never a UnicodeEncodeError.
ESCAPE_ERRORS = "tripletlab.escape"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_unencodable(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for char in err.object[err.start : err.end]:
        code = ord(char)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), err.end


codecs.register_error(ESCAPE_ERRORS, _escape_unencodable)


def escape_name(name: str | bytes | os.PathLike) -> str:
    """A file name as text any UTF-8 writer takes: bytes that are not UTF-8 as ``\\xNN``
    (``b"img\\xff.png"`` -> ``img\\xff.png``); a UTF-8 name is returned as it is."""
    text = os.fsdecode(name) if isinstance(name, bytes | os.PathLike) else str(name)
    return text.encode("utf-8", ESCAPE_ERRORS).decode("utf-8")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically. Newlines are written as given.

    Every text file tripletlab writes passes here (JSON, CSV, YAML, TSV...): a credential
    in it is masked, with a warning naming the file (:func:`tripletlab.credentials.redact`),
    and a file name's bytes that are not UTF-8 are written escaped (:data:`ESCAPE_ERRORS`).
    """
    return atomic_write_bytes(path, redact(text, str(path)).encode("utf-8", ESCAPE_ERRORS))


def redact_file(path: str | os.PathLike) -> None:
    """Rewrite a text file another program wrote (Hydra's ``multirun.yaml``) with every
    credential masked; nothing happens when it holds none or cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if redact(text) != text:
        atomic_write_text(path, text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, keys in insertion order, trailing newline)."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)
    # A surrogate (a file name's byte that is not UTF-8) as JSON's own escape: valid JSON,
    # and json.load gives the very name back.
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    fieldnames: Sequence[str],
) -> Path:
    """Write ``rows`` as a CSV file with a header of ``fieldnames``.

    Keys missing from a row are written as empty cells; keys not in ``fieldnames`` are an
    error (``ValueError``), because silently dropping a column hides a bug. ``None`` is
    written as an empty cell.
    """
    buf = io.StringIO()
    # lineterminator "\n": the csv default "\r\n" is surprising in files read on Linux.
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's plain content (dicts, lists, scalars); None if missing or unreadable."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path) as f:
            return yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)
    except (OSError, yaml.YAMLError):
        return None


def is_hidden(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Whether ``path`` (relative to ``root`` if given) has a part starting with a dot:
    .DS_Store, .ipynb_checkpoints, .git ..."""
    rel = Path(path).relative_to(root) if root is not None else Path(Path(path).name)
    return any(part.startswith(".") for part in rel.parts)
