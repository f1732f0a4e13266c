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


# ------------------------------------------------------------- a garbled metrics file
# Before: a finished run whose metrics file lost, gained or garbled rows stayed so on its
# rerun ("already finished"), and a metrics file that is no UTF-8 CSV text (or holds a
# field past csv's limit) stopped every rerun with a traceback (UnicodeDecodeError,
# csv.Error) instead of being rebuilt from the checkpoint.
EPOCHS = 2
COMPARED = ["epoch", "step", "loss", "embedding_spread", "learning_rate", "precision_at_1"]
COMPARED += ["map_at_r", "knn_accuracy", "eval_queries"]


def _drop_last(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _duplicate_last(path: Path) -> None:
    path.write_text(path.read_text() + path.read_text().splitlines(keepends=True)[-1])


GARBLE = {
    "deleted": lambda p: p.unlink(),
    "header only": lambda p: p.write_text(p.read_text().splitlines(keepends=True)[0]),
    "last row dropped": _drop_last,
    "last row duplicated": _duplicate_last,
    "empty": lambda p: p.write_bytes(b""),
    "not UTF-8": lambda p: p.write_bytes(p.read_bytes()[:40] + b"\xff\xfe\x00" + b"\n"),
    "a field past csv's limit": lambda p: p.write_text('epoch\n"' + "x" * 200_000 + '"\n'),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import tripletlab
    from tests.helpers import TINY

    overrides = [*TINY, f"trainer.epochs={EPOCHS}", "trainer.steps_per_epoch=2"]
    overrides += ["trainer.deterministic=true", "trainer.mixed_precision=off"]
    run = tmp_path_factory.mktemp("finished") / "run"
    tripletlab.train(tripletlab.compose(overrides), run)
    return run, overrides


def _rows(run: Path) -> list[dict]:
    return RunFolder(run).read_metrics()


@pytest.mark.e2e
@pytest.mark.parametrize("state", ["finished", "interrupted after epoch 1"])
@pytest.mark.parametrize("garble", list(GARBLE))
def test_a_garbled_metrics_file_is_rebuilt_by_the_rerun(finished, tmp_path, state, garble):
    import tripletlab
    from tests.helpers import simulate_kill

    source, overrides = finished
    want = _rows(source)
    run = tmp_path / "run"
    if state == "finished":
        shutil.copytree(source, run)
    else:
        simulate_kill(source, run, rows_kept=1, checkpoints_kept=[1])
    GARBLE[garble](run / "metrics.csv")
    tripletlab.train(tripletlab.compose(overrides), run)
    got = _rows(run)
    assert [r["epoch"] for r in got] == [str(e) for e in range(1, EPOCHS + 1)], garble
    for g, w in zip(got, want, strict=True):
        for key in COMPARED:
            assert np.isclose(float(g[key]), float(w[key]), rtol=1e-6), (garble, key, g, w)
