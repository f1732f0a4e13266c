"""What a lease lock reads from its file and says about it (tripletlab.lease_lock), through
LeaseLock and read_holder: the cases mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import logging
import time

import pytest

from tripletlab.lease_lock import LeaseLock, LockFileError, LockTimeout, read_holder

RECORD = "host=node-3\npidns=pid:[1]\npid={pid}\ntoken={token}\n"


@pytest.mark.parametrize("token", ["a=b", "==", "x=y=z"])
def test_a_field_whose_value_holds_an_equals_sign_is_read_whole(tmp_path, token):
    """Bug: each line split at every "=" (or at two), which drops or refuses the rest."""
    path = tmp_path / "x.lock"
    path.write_text(RECORD.format(pid=4242, token=token))
    holder = read_holder(path)
    assert (holder.host, holder.pid, holder.token, holder.garbage) == ("node-3", 4242, token, False)


@pytest.mark.parametrize("pid", ["0", "-1", "-4242", "2147483648", "", None])
def test_a_record_without_a_pid_this_host_can_ask_about_is_garbage(tmp_path, pid):
    """0 and negative pids name process groups (os.kill(0, 0) always succeeds): such a
    record names no holder, and only its age frees it. Bug: the range check or'ed away."""
    path = tmp_path / "x.lock"
    text = RECORD.format(pid=pid, token="t0") if pid is not None else "host=h\ntoken=t0\n"
    path.write_text(text)
    holder = read_holder(path)
    assert (holder.pid, holder.host, holder.token, holder.garbage) == (None, "", "", True)


def test_a_fresh_garbage_lock_times_out_saying_it_is_no_record(tmp_path):
    """Bug: garbage not flagged, the message names "an unknown host pid ?" as the holder."""
    path = tmp_path / "x.lock"
    path.write_bytes(b"\xff\xfe not a lock\n")
    with pytest.raises(LockTimeout) as err:
        LeaseLock(path, lease=60, timeout=0).acquire()
    assert f"{path} is held by no one it names (its content is not a lock record)" in str(err.value)


def test_a_folder_or_a_link_in_place_of_the_lock_is_one_message_with_the_fix(tmp_path):
    """Bug: the message's parts computed from the wrong argument (a TypeError escapes)."""
    folder = tmp_path / "d.lock"
    folder.mkdir()
    with pytest.raises(LockFileError, match=rf"is a folder, .*\(rm -r {folder}\)"):
        LeaseLock(folder, timeout=0).acquire()
    (tmp_path / "real").write_text(RECORD.format(pid=1, token="t"))
    link = tmp_path / "l.lock"
    link.symlink_to(tmp_path / "real")
    with pytest.raises(LockFileError, match=rf"is a symbolic link, .*\(rm {link}\)"):
        LeaseLock(link, timeout=0).acquire()
    assert folder.is_dir() and link.is_symlink()  # nothing removed behind the user's back


def test_a_holder_whose_lock_was_taken_over_says_so_once(tmp_path, caplog):
    """The heartbeat finds another token in the file: one warning naming the file, and the
    release leaves the new holder's lock. Bug: the warning's arguments lost."""
    path = tmp_path / "x.lock"
    lock = LeaseLock(path, lease=0.2, timeout=5)
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        lock.acquire()
        path.write_text(RECORD.format(pid=4242, token="theirs"))
        time.sleep(0.5)  # ten heartbeats
        lock.release()
    lost = [r.getMessage() for r in caplog.records if "lost the lock" in r.msg]
    assert lost == [f"lost the lock {path} (taken over by another process)"]
    assert read_holder(path).token == "theirs"
