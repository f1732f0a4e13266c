"""A run folder's ``.lock`` that is no lock file: one message naming it, never a traceback.

Generated variants: garbage contents (random bytes of several lengths, NULs, invalid UTF-8,
records with a bad, absent or absurd pid, no host or token, an oversized record), kinds of
path (a folder, links to a file, a folder and nowhere, a link loop, a FIFO), an unreadable
file, an immutable stale lock (``chattr +i``) and a stale lock in a read-only folder.

Root reads any file and writes any folder whatever the permission bits (its capabilities
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH), so as root the unreadable and read-only cases run
in a child process that dropped those two from its bounding set: the bits of the files it
owns then bind it. ``chattr +i`` needs root (CAP_LINUX_IMMUTABLE) and a file system that
supports it. A case that cannot be set up
on this machine is skipped, saying why. Through run.py, a few of them end in one ``error:``
line and exit status 1.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY
from tripletlab.lease_lock import _pid_namespace
from tripletlab.run_folder import LOCK_FILE, RunFolder, RunFolderBusy, RunFolderLocked, RunLock

LEASE = 60.0


def garbage_contents() -> Iterator[tuple[str, bytes]]:
    rng = random.Random(25)
    for n in (1, 7, 64, 4095, 4097, 100_000):
        yield f"random-{n}-bytes", bytes(rng.randrange(256) for _ in range(n))
    yield "nul-bytes", b"\0" * 32
    yield "invalid-utf8", b"\xff\xfe\xfd host=\xc3\n"
    yield "text-without-fields", b"locked by me\n"
    for pid in ("", "abc", "-1", "0", "1e3", "0x10", "2147483648", "9" * 30):
        yield f"pid={pid or 'empty'}", f"host=h\npidns=x\npid={pid}\ntoken=t\n".encode()
    yield "no-host", b"pidns=x\npid=12\ntoken=t\n"
    yield "no-token", b"host=h\npidns=x\npid=12\n"
    yield "oversized-record", b"host=h\npidns=x\npid=12\ntoken=t\n" + b"#" * 5000


GARBAGE = list(garbage_contents())


def acquire_within(folder: RunFolder, seconds: float = 20.0):
    """RunLock(folder).acquire() in a thread: (the lock or None, the exception or None);
    fails the test if it does not return within ``seconds`` (a hang)."""
    out: dict = {}

    def target():
        lock = RunLock(folder, lease_seconds=LEASE)
        try:
            lock.acquire()
            out["lock"] = lock
        except BaseException as err:  # noqa: BLE001 - reported to the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"acquiring {folder.path} hung"
    return out.get("lock"), out.get("error")


def assert_one_message(error: BaseException | None, path: Path, *words: str) -> str:
    assert isinstance(error, RunFolderBusy), repr(error)
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word in text, (word, text)
    return text


@pytest.mark.parametrize(("name", "content"), GARBAGE, ids=[n for n, _ in GARBAGE])
def test_a_fresh_lock_of_garbage_is_one_message(tmp_path, name, content):
    path = tmp_path / LOCK_FILE
    path.write_bytes(content)
    lock, error = acquire_within(RunFolder(tmp_path))
    assert lock is None
    assert_one_message(error, path, "not a lock record", f"rm {path}")
    assert path.read_bytes() == content  # left as it was


@pytest.mark.parametrize(("name", "content"), GARBAGE[::4], ids=[n for n, _ in GARBAGE[::4]])
def test_a_lock_of_garbage_older_than_its_lease_is_taken_over(tmp_path, name, content, caplog):
    path = tmp_path / LOCK_FILE
    path.write_bytes(content)
    old = time.time() - 2 * LEASE
    os.utime(path, (old, old))
    lock, error = acquire_within(RunFolder(tmp_path))
    assert error is None and lock is not None
    try:
        assert f"token={lock.token}" in path.read_text()
        assert "not a lock record" in caplog.text and str(path) in caplog.text
    finally:
        lock.release()
    assert not path.exists()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


KINDS = {
    "empty folder": lambda p: p.mkdir(),
    "folder with files": lambda p: (p.mkdir(), (p / "x").write_text("host=h\n")),
    "link to a lock record": lambda p: (
        (p.parent / "real").write_text("host=h\npid=1\ntoken=t\n"),
        p.symlink_to(p.parent / "real"),
    ),
    "dangling link": lambda p: p.symlink_to(p.parent / "nowhere"),
    "link to a folder": lambda p: ((p.parent / "d").mkdir(), p.symlink_to(p.parent / "d")),
    "link loop": lambda p: p.symlink_to(p),
    "fifo": _fifo,
    "unix socket": _socket,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_lock_path_that_is_no_file_is_one_message(tmp_path, kind):
    path = tmp_path / LOCK_FILE
    KINDS[kind](path)
    lock, error = acquire_within(RunFolder(tmp_path))
    assert lock is None
    assert isinstance(error, RunFolderLocked), repr(error)
    text = assert_one_message(error, path, "not a lock file", "remove")
    assert "hydra.run.dir" in text  # or another folder
    assert os.path.lexists(path)  # nothing removed behind the user's back


def _stale_record(path: Path) -> None:
    """A lock left by a dead process of this host: taken over at once when it can be."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    path.write_text(
        f"host={socket.gethostname()}\npidns={_pid_namespace()}\npid={proc.pid}\ntoken=t\n"
    )


def test_an_immutable_stale_lock_is_one_message(tmp_path):
    path = tmp_path / LOCK_FILE
    _stale_record(path)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    try:
        lock, error = acquire_within(RunFolder(tmp_path))
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert lock is None
    assert isinstance(error, RunFolderLocked)
    assert_one_message(error, path, "stale", "cannot be moved aside", f"chattr -i {path}")


# --------------------------------------------- permission bits (root bypasses them)
CHILD = """
import sys
from tripletlab.run_folder import RunFolder, RunFolderBusy, RunLock
try:
    RunLock(RunFolder(sys.argv[1])).acquire()
    print("ACQUIRED")
except RunFolderBusy as err:
    print("REFUSED", err)
"""


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def acquire_bound_by_permissions(folder: Path) -> subprocess.CompletedProcess:
    """RunLock(folder).acquire() in a child process bound by the permission bits: as root
    without the two capabilities that bypass them (dropped before exec, so the child's
    root never regains them), as ourselves otherwise."""

    def drop() -> None:
        if os.geteuid() == 0:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "Operation not permitted: PR_CAPBSET_DROP")

    return subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        cwd=ROOT,
        preexec_fn=drop,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def shared_dir(tmp_path):
    """tmp_path, made removable again after a test made parts of it read-only."""
    yield tmp_path
    for p in (tmp_path, *tmp_path.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def _bound_or_skip(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0 and "PR_CAPBSET_DROP" in proc.stderr:
        pytest.skip("cannot drop root's capabilities here (no CAP_SETPCAP)")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_unreadable_lock_is_one_message(shared_dir):
    run = shared_dir / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    path = run / LOCK_FILE
    path.write_text("host=h\npidns=x\npid=12\ntoken=t\n")
    path.chmod(0o000)
    proc = acquire_bound_by_permissions(run)
    _bound_or_skip(proc)
    assert proc.stdout.startswith("REFUSED"), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    assert f"cannot read the lock file {path}" in proc.stdout and f"rm {path}" in proc.stdout


def test_a_stale_lock_in_a_read_only_folder_is_one_message(shared_dir):
    run = shared_dir / "run"
    run.mkdir()
    path = run / LOCK_FILE
    _stale_record(path)
    path.chmod(0o644)
    run.chmod(0o555)  # the stale file cannot be renamed aside
    proc = acquire_bound_by_permissions(run)
    _bound_or_skip(proc)
    assert proc.stdout.startswith("REFUSED"), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    assert f"the stale lock {path}" in proc.stdout and "not writable" in proc.stdout


# ------------------------------------------------------------------ through run.py
@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["empty folder", "garbage", "link loop"])
def test_run_py_prints_one_line_for_a_bad_lock(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    path = run / LOCK_FILE
    if kind == "garbage":
        path.write_bytes(GARBAGE[2][1])
    else:
        KINDS[kind](path)
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run folder"), proc.stderr
    assert str(path) in lines[0] and "Traceback" not in proc.stderr
