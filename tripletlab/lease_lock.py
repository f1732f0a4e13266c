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
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tripletlab.errors import TripletLabError

log = logging.getLogger("tripletlab")


class LockTimeout(TripletLabError):
    """The lock was still held by a live holder when the wait ran out."""


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

    @property
    def seen_as(self) -> tuple:
        """What must stay the same for the holder to count as silent."""
        return (self.inode, self.mtime, self.token)

    def describe(self) -> str:
        who = f"{self.host or 'an unknown host'} pid {self.pid if self.pid else '?'}"
        return f"{who}, touched {max(time.time() - self.mtime, 0):.0f} s ago"


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in ``path``; None when there is no lock file. A file being
    written (empty, partial) gives a holder with no pid: only its age can free it."""
    try:
        st = os.stat(path)
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        pid = None
    return Holder(
        host=fields.get("host", ""),
        namespace=fields.get("pidns", ""),
        pid=pid,
        token=fields.get("token", ""),
        mtime=st.st_mtime,
        inode=st.st_ino,
    )


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
        return time.time() - holder.mtime > self.lease or silent_for > self.lease

    def _take_over(self, stale: Holder) -> None:
        """Move the stale file aside, unless another waiter already replaced it."""
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(6)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another waiter moved it first
        moved = read_holder(aside)
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
        holder = read_holder(self.path)
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.token = None

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
