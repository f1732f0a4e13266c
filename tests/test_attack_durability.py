"""Issue 25 parts 3, 4 and 5 (locks), attacked by someone who did not write them.

Each test here failed before its fix:

- the data fingerprint did not follow a class folder that is a symbolic link (loading
  does), so every change to such a dataset resumed without a word;
- a lock file naming this process's own pid (left by an earlier process with the same pid:
  pids are reused, and a container's first pids always are) counted as a live holder, so
  the folder was refused for a lease, "in use by process <our own pid>".
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_image_folder
from tripletlab.data import fingerprint
from tripletlab.lease_lock import LeaseLock, LockTimeout, _pid_namespace
from tripletlab.run_folder import RunFolder, RunLock


# ---------------------------------------------------------------- linked class folders
def _first_image(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")[0]


def _same_size_other_pixels(folder: Path) -> None:
    path = _first_image(folder)
    before = path.stat().st_size
    pixels = np.asarray(Image.open(path))
    Image.fromarray(255 - pixels).save(path)
    if path.stat().st_size != before:  # PNG compression: pad to the same size
        pytest.skip("the inverted image compresses to another size")


CHANGES = {
    "one image's pixels (same size)": _same_size_other_pixels,
    "an image added": lambda f: shutil.copy(_first_image(f), f / "zz_new.png"),
    "an image removed": lambda f: _first_image(f).unlink(),
    "an image renamed": lambda f: _first_image(f).rename(f / "renamed.png"),
}


def _linked_layout(base: Path, layout: str) -> tuple[Path, Path]:
    """(root given to dataset.root, the real class folder 'a' that a change touches)."""
    real = base / "elsewhere"
    if layout == "class folders linked":
        write_image_folder(real, {"a": 4, "b": 4})
        root = base / "root"
        root.mkdir()
        for name in ("a", "b"):
            (root / name).symlink_to(real / name, target_is_directory=True)
        return root, real / "a"
    if layout == "train/ and test/ linked":
        write_image_folder(real / "train", {"a": 4, "b": 4})
        write_image_folder(real / "test", {"a": 2, "b": 2}, seed=1)
        root = base / "root"
        root.mkdir()
        for split in ("train", "test"):
            (root / split).symlink_to(real / split, target_is_directory=True)
        return root, real / "train" / "a"
    if layout == "one class linked, with a loop back to the root":
        write_image_folder(base / "root", {"b": 4})
        write_image_folder(real, {"a": 4})
        root = base / "root"
        (root / "a").symlink_to(real / "a", target_is_directory=True)
        (real / "a" / "up").symlink_to(root, target_is_directory=True)
        return root, real / "a"
    raise AssertionError(layout)


LAYOUTS = [
    "class folders linked",
    "train/ and test/ linked",
    "one class linked, with a loop back to the root",
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_behind_a_linked_class_folder_changes_the_fingerprint(tmp_path, layout, change):
    root, touched = _linked_layout(tmp_path, layout)
    cfg = SimpleNamespace(name="image_folder", root=str(root))
    before = fingerprint(cfg)
    assert before is not None and before["files"] > 0, before
    CHANGES[change](touched)
    after = fingerprint(cfg)
    assert after != before, f"{layout}: {change} left the fingerprint as it was"


def test_a_linked_folder_counts_as_its_copy(tmp_path):
    """Following links reads the same files as a real copy, each once (a loop is cut)."""
    root, _ = _linked_layout(tmp_path / "l", "one class linked, with a loop back to the root")
    copy = tmp_path / "copy"
    write_image_folder(copy, {"b": 4})
    write_image_folder(tmp_path / "c2", {"a": 4})
    shutil.copytree(tmp_path / "c2" / "a", copy / "a")
    linked = fingerprint(SimpleNamespace(name="image_folder", root=str(root)))
    copied = fingerprint(SimpleNamespace(name="image_folder", root=str(copy)))
    assert linked == copied


# ------------------------------------------------------------- a lock naming our own pid
def _record(pid: int, token: str, eol: str = "\n") -> str:
    lines = [f"host={socket.gethostname()}", f"pidns={_pid_namespace()}", f"pid={pid}"]
    return eol.join([*lines, f"token={token}", ""])


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("token", ["0123456789abcdef", "t", "x" * 64])
def test_a_lock_left_by_an_earlier_process_with_our_pid_is_taken_over(tmp_path, token, eol):
    (tmp_path / ".lock").write_text(_record(os.getpid(), token, eol), newline="")
    with RunLock(RunFolder(tmp_path)) as lock:
        assert lock.token and lock.token != token
        assert f"token={lock.token}" in (tmp_path / ".lock").read_text()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_this_process_holds_is_not_taken_over_by_itself(tmp_path):
    """The other side: a second lock object of the same process waits for the first."""
    path = tmp_path / ".lock"
    with LeaseLock(path, lease=60, timeout=0.3) as first:
        with pytest.raises(LockTimeout):
            LeaseLock(path, lease=60, timeout=0.3).acquire()
        assert f"token={first.token}" in path.read_text()
