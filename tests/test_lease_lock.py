"""The lock file with a lease (tripletlab.lease_lock): who may take over, and when."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tripletlab.lease_lock import LeaseLock, LockTimeout, _pid_namespace, read_holder


def _leave_lock(path, host: str, pid: int, age: float = 0.0, namespace: str = "") -> None:
    """A lock file as a killed holder leaves it: its record, last touched ``age`` s ago."""
    path.write_text(f"host={host}\npidns={namespace}\npid={pid}\ntoken=0123456789abcdef\n")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_of_another_host_untouched_for_a_lease_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    _leave_lock(path, "node-17", 4242, age=3600)
    start = time.monotonic()
    with LeaseLock(path, lease=60, timeout=30) as lock:
        assert time.monotonic() - start < 5
        assert read_holder(path).token == lock.token  # ours now
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # nothing left aside


def test_a_live_lock_of_another_host_is_waited_for_then_one_message(tmp_path):
    path = tmp_path / "x.lock"
    _leave_lock(path, "node-17", 4242, age=1)
    start = time.monotonic()
    with pytest.raises(LockTimeout) as info:
        LeaseLock(path, lease=60, timeout=0.5).acquire()
    assert 0.5 <= time.monotonic() - start < 5
    message = str(info.value)
    assert "node-17 pid 4242" in message and str(path) in message and "remove" in message
    assert read_holder(path).host == "node-17"  # left as it was


def test_a_silent_holder_is_taken_over_after_a_lease_even_with_a_skewed_clock(tmp_path):
    """A file touched 'in the future' (the other host's clock is ahead) never looks old by
    its mtime; the waiter's own clock frees it once it has not changed for a lease."""
    path = tmp_path / "x.lock"
    _leave_lock(path, "node-17", 4242, age=-3600)
    start = time.monotonic()
    with LeaseLock(path, lease=1.0, timeout=30):
        assert 1.0 <= time.monotonic() - start < 5


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    path = tmp_path / "x.lock"
    _leave_lock(path, socket.gethostname(), _dead_pid(), namespace=_pid_namespace())
    start = time.monotonic()
    with LeaseLock(path, lease=60, timeout=30):
        assert time.monotonic() - start < 5
    # The same pid seen from another pid namespace (a container) proves nothing.
    _leave_lock(path, socket.gethostname(), _dead_pid(), namespace="pid:[1]")
    with pytest.raises(LockTimeout):
        LeaseLock(path, lease=60, timeout=0.3).acquire()


def test_a_holder_that_outlives_its_lease_keeps_the_lock_by_heartbeat(tmp_path):
    path = tmp_path / "x.lock"
    order = []
    holder = LeaseLock(path, lease=0.4)
    holder.acquire()

    def wait_for_it():
        with LeaseLock(path, lease=0.4, timeout=30):
            order.append("waiter")

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(2.0)  # five leases: without the heartbeat the waiter would take over
    order.append("holder done")
    holder.release()
    waiter.join(30)
    assert order == ["holder done", "waiter"]
    assert not path.exists()


def test_release_leaves_a_lock_taken_over_by_another_process(tmp_path):
    path = tmp_path / "x.lock"
    lock = LeaseLock(path, lease=60)
    lock.acquire()
    path.unlink()  # taken over meanwhile (the holder looked dead)
    _leave_lock(path, "node-17", 4242)
    lock.release()
    assert read_holder(path).host == "node-17"
