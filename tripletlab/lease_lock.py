"""A lock file with a lease, for a folder that processes on several hosts write (a sweep's
summary on a shared file system).

The holder creates the lock file exclusively (``O_CREAT | O_EXCL``, which NFS, Lustre and
local file systems all honour, unlike ``flock``), writes its host, pid and a random token in
it, and touches it every ``lease / 4`` seconds while it holds the lock. A waiter takes the
lock over when its holder is gone:

- at once when the holder ran on this host (same host name and pid namespace) and its pid
  is dead;
- otherwise when the file was last touched more than ``lease`` seconds ago, by this host's
  clock (a job killed on another host, whose pid cannot be checked), or has not changed for
  ``lease`` seconds of the waiter's own monotonic clock (so that a clock skew between hosts
  delays a take-over but cannot prevent it).

A waiter waits at most ``timeout`` seconds, then raises :class:`LockTimeout`, which names the
holder and the file. A take-over renames the stale file aside first and checks it was the one
it judged stale, so two waiters never both take over the same stale lock.

A lock path that is no readable regular file (a folder, a link, a FIFO, another user's
unreadable file) or a stale lock that cannot be moved aside (immutable, a read-only folder)
raises :class:`LockFileError`, one message naming the path and what to do. Content that is
no lock record (garbage) counts as a holder that cannot be asked: only its age frees it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tripletlab.errors import TripletLabError

log = logging.getLogger("tripletlab")


class LockTimeout(TripletLabError):
    """The lock was still held by a live holder when the wait ran out."""


class LockFileError(TripletLabError):
    """The lock's path is not a lock file this process can read, or a stale one it cannot
    move aside (a folder, a link, a FIFO, an unreadable or immutable file): one message
    naming the path and what to do."""


# A lock record is a few short lines; anything longer is not one (and is not read whole).
MAX_RECORD_BYTES = 4096
# A pid this module can ask about (os.kill): 1..2**31-1; 0 and negatives name groups.
_MAX_PID = 2**31 - 1
# The tokens of the locks this process holds: a lock file that names this process's pid
# with another token was left by an earlier process that had the same pid (pids are reused,
# a container's first pids always), and that process is gone.
_HELD_TOKENS: set[str] = set()


def _pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``): two containers may share a host
    name, and a pid means something only in its own namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    """What a lock file says about its holder, and its state when read."""

    host: str
    namespace: str
    pid: int | None
    token: str
    mtime: float
    inode: int
    garbage: bool = False  # not empty, yet not a lock record (a being-written one is empty)

    @property
    def seen_as(self) -> tuple:
        """What must stay the same for the holder to count as silent."""
        return (self.inode, self.mtime, self.token)

    def describe(self) -> str:
        if self.garbage:
            who = "no one it names (its content is not a lock record)"
        else:
            who = f"{self.host or 'an unknown host'} pid {self.pid if self.pid else '?'}"
        return f"{who}, touched {max(time.time() - self.mtime, 0):.0f} s ago"


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in ``path``; None when there is no lock file. A file being
    written (empty) gives a holder with no pid: only its age can free it; so does one whose
    content is no lock record (``garbage``). Raises :class:`LockFileError` when ``path`` is
    no regular file this process can read (a folder, a link, a FIFO, no permission)."""
    try:
        # No link is followed and no FIFO blocks: a lock file is only ever created by
        # O_CREAT | O_EXCL, which makes a plain file.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LockFileError(_unusable(path, err)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockFileError(_not_a_file(path, st.st_mode))
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as err:
        raise LockFileError(_unusable(path, err)) from None
    finally:
        os.close(fd)
    fields = dict(
        line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line
    )
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        pid = None
    valid = (
        len(data) <= MAX_RECORD_BYTES
        and pid is not None
        and 1 <= pid <= _MAX_PID
        and bool(fields.get("host"))
        and bool(fields.get("token"))
    )
    return Holder(
        host=fields.get("host", "") if valid else "",
        namespace=fields.get("pidns", "") if valid else "",
        pid=pid if valid else None,
        token=fields.get("token", "") if valid else "",
        mtime=st.st_mtime,
        inode=st.st_ino,
        garbage=bool(data) and not valid,
    )


def _not_a_file(path: Path, mode: int) -> str:
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
    remove = f"rm -r {path}" if stat.S_ISDIR(mode) else f"rm {path}"
    return (
        f"{path} is {kind}, not a lock file: if no process uses it, remove it ({remove}) "
        "and start again"
    )


def _unusable(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:  # O_NOFOLLOW on a symbolic link
        return (
            f"{path} is a symbolic link, not a lock file: if no process uses it, remove the "
            f"link (rm {path}) and start again"
        )
    if err.errno == errno.ENXIO:  # O_RDONLY on a socket
        return (
            f"{path} is a socket, not a lock file: if no process uses it, remove it "
            f"(rm {path}) and start again"
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot read the lock file {path} ({err.strerror}): if no process uses it, "
            f"remove it (rm {path}, as its owner if it is another user's), or use another "
            "folder"
        )
    return (
        f"cannot read the lock file {path} ({err.strerror}): if no process uses it, remove "
        f"it (rm {path}) and start again"
    )


def _cannot_move(path: Path, stale: Holder, err: OSError) -> str:
    if err.errno == errno.EPERM:
        why = f"it may be immutable (lsattr {path}; chattr -i {path} as root), then remove it"
    elif err.errno == errno.EROFS:
        why = "the file system is read-only: remount it writable, or use another folder"
    elif err.errno == errno.EACCES:
        why = f"{path.parent} is not writable by this user: its owner must remove the file"
    else:
        why = "remove it by hand"
    who = "garbage, not a lock record" if stale.garbage else f"held by {stale.describe()}"
    return f"the stale lock {path} ({who}, gone) cannot be moved aside ({err.strerror}): {why}"


def _pid_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class LeaseLock:
    """An exclusive lock on ``path`` (a file that must not exist otherwise).

    Args:
        path: the lock file.
        lease: seconds without a touch after which a holder on another host counts as gone.
            Every process that shares the lock must use the same value.
        timeout: the longest wait in :meth:`acquire`, in seconds.
        poll: seconds between attempts.
    """

    def __init__(
        self, path: str | os.PathLike, lease: float = 60.0, timeout: float = 600.0, poll=0.05
    ) -> None:
        if lease <= 0 or timeout < 0:
            raise ValueError(f"lease must be > 0 and timeout >= 0, got {lease} and {timeout}")
        self.path = Path(path)
        self.lease = float(lease)
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.host = socket.gethostname()
        self.namespace = _pid_namespace()
        self.token: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire
    def acquire(self) -> None:
        """Take the lock, taking over a stale one; LockTimeout after ``timeout`` seconds."""
        if self.token is not None:
            raise RuntimeError(f"{self.path} is already held by this LeaseLock")
        start = time.monotonic()
        silent_since: dict[tuple, float] = {}  # holder state -> when we first saw it
        while True:
            if self._create():
                return
            holder = read_holder(self.path)
            if holder is None:
                continue  # released in between: try again at once
            now = time.monotonic()
            first_seen = silent_since.setdefault(holder.seen_as, now)
            if self._is_stale(holder, silent_for=now - first_seen):
                self._take_over(holder)
                continue
            if now - start >= self.timeout:
                raise LockTimeout(
                    f"{self.path} is held by {holder.describe()}, and was not released "
                    f"within {self.timeout:.0f} s: if no process there still uses it, "
                    f"remove the file"
                )
            time.sleep(self.poll)

    def _create(self) -> bool:
        token = secrets.token_hex(8)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            text = f"host={self.host}\npidns={self.namespace}\npid={os.getpid()}\ntoken={token}\n"
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        self.token = token
        _HELD_TOKENS.add(token)
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._keep_alive, name=f"lease {self.path.name}", daemon=True
        )
        self._heartbeat.start()
        return True

    def _is_stale(self, holder: Holder, silent_for: float) -> bool:
        local = holder.host == self.host and holder.namespace == self.namespace
        if local and holder.pid is not None and _pid_is_dead(holder.pid):
            return True
        if local and holder.pid == os.getpid() and holder.token not in _HELD_TOKENS:
            return True
        return time.time() - holder.mtime > self.lease or silent_for > self.lease

    def _take_over(self, stale: Holder) -> None:
        """Move the stale file aside, unless another waiter already replaced it."""
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(6)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another waiter moved it first
        except OSError as err:  # immutable, a read-only folder or file system
            raise LockFileError(_cannot_move(self.path, stale, err)) from None
        try:
            moved = read_holder(aside)
        except LockFileError:
            moved = None  # replaced by something else meanwhile: not ours to put back
        if moved is not None and moved.seen_as != stale.seen_as:
            # A live holder's file, created or touched after we looked: put it back (a link
            # fails if yet another process has created the lock meanwhile).
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        else:
            log.warning("took over %s, held by %s (gone)", self.path, stale.describe())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)

    # ------------------------------------------------------------------ hold, release
    def _ours(self) -> bool:
        try:
            holder = read_holder(self.path)
        except LockFileError:  # replaced by a folder or a link: not ours any more
            return False
        return holder is not None and holder.token == self.token

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.lease / 4):
            if not self._ours():
                log.warning("lost the lock %s (taken over by another process)", self.path)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        if self.token is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as err:  # made immutable or read-only meanwhile: say so, once
                log.warning("could not remove the lock %s (%s): remove it", self.path, err)
        _HELD_TOKENS.discard(self.token)
        self.token = None

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
