"""One record of a run (tripletlab.run_record): ``.hydra/config.yaml`` and the training
data's fingerprint ``.hydra/data.yaml``, written once when the folder is claimed; the only
sources a rerun compares with; never rewritten by a resume. The reuse commands warn when a
run's own data changed since (tripletlab.reuse.run_config.load_data).

The fingerprint is checked through ``tripletlab.data.fingerprint`` against generated
changes of a folder (an image added, removed, renamed, its bytes changed at the same size,
resized; hidden and non-image files ignored) and of IDX files; end to end, a rerun on other
data is refused naming what changed, and a forced one is recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import tripletlab
from tests.helpers import ROOT, TINY, read_rows, read_summary, write_idx_folder, write_image_folder
from tripletlab.data import IDX_FILES, fingerprint, write_idx
from tripletlab.run_folder import RunConfigMismatch
from tripletlab.run_record import data_differences

FOLDER_RUN = [
    "dataset=image_folder",
    "dataset.image_size=8",
    "dataset.channels=1",
    *[o for o in TINY if not o.startswith("dataset=")],
]


def _image_folder_cfg(root: Path):
    return tripletlab.compose([*FOLDER_RUN, f"dataset.root={root}"]).dataset


def _touch_one(root: Path, change: str) -> str:
    """Change the folder as ``change`` says; the group (sub-folder) it touches, or None."""
    first = root / "b" / "1.png"
    if change == "added":
        shutil.copy(first, root / "b" / "9.png")
    elif change == "removed":
        first.unlink()
    elif change == "renamed":
        first.rename(root / "b" / "1b.png")
    elif change == "same size, other bytes":
        data = bytearray(first.read_bytes())
        data[-20] ^= 0xFF
        first.write_bytes(bytes(data))
    elif change == "grown":
        first.write_bytes(first.read_bytes() + b"\0")
    elif change == "moved to another class":
        first.rename(root / "c" / "from-b.png")
        return "b, c"
    elif change in ("hidden file", "non-image file"):
        name = ".DS_Store" if change == "hidden file" else "notes.txt"
        (root / "b" / name).write_text("x")
        return None
    return "b"


CHANGES = [
    "added",
    "removed",
    "renamed",
    "same size, other bytes",
    "grown",
    "moved to another class",
    "hidden file",
    "non-image file",
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_folder_fingerprint_names_the_sub_folder_that_changed(tmp_path, change):
    root = tmp_path / "data"
    write_image_folder(root, {c: 4 for c in "abcd"}, size=(8, 8))
    before = fingerprint(_image_folder_cfg(root))
    touched = _touch_one(root, change)
    after = fingerprint(_image_folder_cfg(root))
    lines = data_differences(before, after)
    if touched is None:  # what the loader never reads does not count
        assert before == after
        return
    assert lines, change
    for group in touched.split(", "):
        assert any(f"groups.{group}." in line for line in lines), (change, lines)
    assert not any("groups.a." in line or "groups.d." in line for line in lines)


@pytest.mark.parametrize("what", ["more images", "other labels, same size", "uncompressed"])
def test_an_idx_fingerprint_names_the_file_that_changed(tmp_path, what):
    root = tmp_path / "idx"
    arrays = write_idx_folder(root, n_train=40, shape=(8, 8))
    cfg = tripletlab.compose(["dataset=mnist", f"dataset.root={root}"]).dataset
    before = fingerprint(cfg)
    name = f"{IDX_FILES['train_labels']}.gz"
    if what == "more images":
        name = f"{IDX_FILES['train_images']}.gz"
        write_idx(root / name, np.concatenate([arrays["train_images"]] * 2))
    elif what == "other labels, same size":
        write_idx(root / name, arrays["train_labels"][::-1].copy())
    else:  # the uncompressed file is preferred by the loader: it is what is read now
        write_idx(root / IDX_FILES["train_labels"], arrays["train_labels"])
        name = IDX_FILES["train_labels"]
    lines = data_differences(before, fingerprint(cfg))
    assert lines and any(name in line for line in lines), lines


def test_digits_fingerprint_is_its_generating_file():
    found = fingerprint(tripletlab.compose(["dataset=digits"]).dataset)
    assert found["dataset"] == "digits" and found["file"] == "digits.csv.gz"
    assert len(found["sha256"]) == 64 and found["bytes"] > 0


# ------------------------------------------------------------------------ end to end
@pytest.mark.e2e
def test_a_rerun_on_other_data_is_refused_naming_it_and_a_forced_one_is_recorded(tmp_path, caplog):
    root, run = tmp_path / "data", tmp_path / "run"
    write_image_folder(root, {c: 4 for c in "abcd"}, size=(8, 8))
    overrides = [*FOLDER_RUN, f"dataset.root={root}"]
    tripletlab.train(tripletlab.compose(overrides), run)
    record = yaml.safe_load((run / ".hydra" / "data.yaml").read_text())
    assert record == fingerprint(_image_folder_cfg(root))
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    shutil.copy(root / "c" / "0.png", root / "c" / "new.png")
    from tripletlab.reuse.run_config import load_config, load_data

    load_data(load_config(run), (8, 8, 1))  # the reuse commands say it, and go on
    assert "changed since it was trained" in caplog.text
    assert "data groups.c.files: 4 -> 5" in caplog.text
    longer = tripletlab.compose([*overrides, "trainer.epochs=2"])
    with pytest.raises(RunConfigMismatch) as err:
        tripletlab.train(longer, run)
    text = str(err.value)
    assert "other data" in text and "data groups.c.files: 4 -> 5" in text
    assert "trainer.resume=force" in text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # untouched

    forced = tripletlab.compose([*overrides, "trainer.epochs=2", "trainer.resume=force"])
    tripletlab.train(forced, run)
    assert [r["epoch"] for r in read_rows(run)] == ["1", "2"]
    assert yaml.safe_load((run / ".hydra" / "data.yaml").read_text()) == record  # kept
    log = yaml.safe_load((run / ".hydra" / "forced_resumes.yaml").read_text())
    assert log[0]["after_epoch"] == 1
    assert "data groups.c.files: 4 -> 5" in log[0]["changes"]


@pytest.mark.e2e
def test_the_record_is_written_once_and_is_the_only_source(tmp_path):
    """run.py: a hand-edited summary.json does not let another mining.margin resume, and
    a resume (more epochs) leaves every file of .hydra/ as the first run wrote it."""
    run = tmp_path / "run"

    def run_py(*overrides):
        # 3 steps an epoch: the record is what is checked, not the training (each run.py
        # still pays TensorFlow's start).
        short = [*TINY, "trainer.steps_per_epoch=3"]
        return subprocess.run(
            [sys.executable, "run.py", *short, *overrides, f"hydra.run.dir={run}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run_py().returncode == 0
    record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert {"config.yaml", "data.yaml", "hydra.yaml", "overrides.yaml"} <= set(record)

    summary = read_summary(run)
    summary["config"]["mining"]["margin"] = 0.5  # as if the summary were the record
    (run / "summary.json").write_text(json.dumps(summary))
    refused = run_py("mining.margin=0.5", "trainer.epochs=2")
    assert refused.returncode == 1
    assert "mining.margin: 0.2 -> 0.5" in refused.stderr, refused.stderr

    resumed = run_py("trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in read_rows(run)] == ["1", "2"]
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record
