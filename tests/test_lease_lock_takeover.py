"""The take-over race of tripletlab.lease_lock: two waiters judge the same lock stale, one
takes it over first, and the late one must leave the live lock of the first in place.

The race is made deterministic by running the first waiter's take-over inside the late
waiter's acquire, right after the late one has judged the lock stale and before it moves
the file aside (a subclass that only adds that timing; the locking code is the real one)."""

from __future__ import annotations

import os
import time

import pytest

from tripletlab.lease_lock import LeaseLock, LockTimeout, read_holder


def _leave_stale_lock(path) -> None:
    """The lock file of a holder killed on another host an hour ago."""
    path.write_text("host=node-17\npidns=\npid=4242\ntoken=0123456789abcdef\n")
    stamp = time.time() - 3600
    os.utime(path, (stamp, stamp))


class LateWaiter(LeaseLock):
    """A waiter that another one overtakes between its look at the lock and its move."""

    def __init__(self, path, first: LeaseLock, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.first, self.judged = first, []

    def _is_stale(self, holder, silent_for):
        stale = super()._is_stale(holder, silent_for)
        if stale and not self.judged:
            self.judged.append(holder)
            self.first.acquire()  # the other waiter takes over first
        return stale


def test_a_take_over_that_finds_a_live_holder_leaves_its_lock_in_place(tmp_path):
    path = tmp_path / "x.lock"
    _leave_stale_lock(path)
    first = LeaseLock(path, lease=60, timeout=5)
    late = LateWaiter(path, first, lease=60, timeout=0.5)
    try:
        with pytest.raises(LockTimeout, match="was not released"):
            late.acquire()
        assert late.judged and late.judged[0].host == "node-17"  # it did judge it stale
        holder = read_holder(path)
        assert holder is not None and holder.token == first.token  # the live lock stayed
        assert late.token is None
        assert [p.name for p in tmp_path.iterdir()] == ["x.lock"]  # nothing left aside
    finally:
        first.release()
    assert not path.exists()  # and its holder still owned it when it let go


def test_a_take_over_of_a_lock_still_stale_moves_it_and_takes_the_lock(tmp_path):
    """Control: without the overtaking waiter the same stale lock is taken over."""
    path = tmp_path / "x.lock"
    _leave_stale_lock(path)
    with LeaseLock(path, lease=60, timeout=5) as lock:
        assert read_holder(path).token == lock.token
        assert [p.name for p in tmp_path.iterdir()] == ["x.lock"]
