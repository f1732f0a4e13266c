"""tripletlab.training.checkpoints.Checkpoints on a tiny Keras model, without training: the
cases mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import numpy as np

from tripletlab.training.checkpoints import Checkpoints, saved_rows


def _parts():
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    return model, tf.keras.optimizers.Adam(1e-3)


ROWS = [
    {"epoch": 1, "step": 4, "loss": 0.75, "recall_at_1": np.float32(0.5)},
    {"epoch": 2, "step": 8, "loss": 0.5, "recall_at_1": ""},
]


def test_a_restored_checkpoint_gives_back_the_rows_it_was_saved_with(tmp_path):
    """The rows travel in the checkpoint: a resumed run rebuilds metrics.csv from them
    (a kill may leave the file behind the checkpoint). Bug: the restored rows dropped."""
    saver = Checkpoints(tmp_path, *_parts())
    saver.save(2, ROWS)
    want = [{**r, "recall_at_1": float(r["recall_at_1"]) if r["recall_at_1"] else ""} for r in ROWS]
    resumed = Checkpoints(tmp_path, *_parts())
    assert resumed.rows is None  # nothing restored yet
    assert resumed.restore_latest() == 2
    assert resumed.rows == want == saved_rows(tmp_path)


def test_a_workers_temporary_folder_is_removed_and_closing_again_is_harmless(tmp_path):
    """Bug: the removal made strict, a second close (or a folder already cleaned away)
    raises FileNotFoundError at the end of a finished run."""
    folder = tmp_path / "worker"
    worker = Checkpoints(folder, *_parts(), temporary=True)
    worker.save(1, ROWS[:1])
    assert folder.is_dir()
    worker.close()
    assert not folder.exists()
    worker.close()


def test_a_leftover_of_a_killed_save_that_cannot_be_removed_does_not_stop_the_resume(tmp_path):
    """A save killed before its commit left ckpt-2's temporary folder, with a file that
    cannot be removed (immutable; as on a share where it is another user's): the resume
    from ckpt-1 goes on. Bug: the removal made strict, the resume ends in an OSError."""
    import subprocess

    import pytest

    Checkpoints(tmp_path, *_parts()).save(1, ROWS[:1])
    leftover = tmp_path / "ckpt-2_temp" / "part-0"
    leftover.parent.mkdir()
    leftover.write_text("partial")
    if subprocess.run(["chattr", "+i", str(leftover)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    try:
        assert Checkpoints(tmp_path, *_parts()).restore_latest() == 1
    finally:
        subprocess.run(["chattr", "-i", str(leftover)], check=True)


def test_the_latest_three_checkpoints_are_kept(tmp_path):
    saver = Checkpoints(tmp_path, *_parts())
    for epoch in range(1, 6):
        saver.save(epoch, ROWS[:1])
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == [
        "ckpt-3.index",
        "ckpt-4.index",
        "ckpt-5.index",
    ]


def test_the_files_of_a_save_killed_before_its_commit_are_removed_on_resume(tmp_path):
    """ckpt-2's files written, the index not yet renamed onto it: the resume restores
    ckpt-1 and removes ckpt-2's files (the next save writes ckpt-2 afresh); ckpt-1 stays."""
    Checkpoints(tmp_path, *_parts()).save(1, ROWS[:1])
    kept = sorted(tmp_path.glob("ckpt-1[._]*"))
    leftovers = [tmp_path / "ckpt-2.index", tmp_path / "ckpt-2.data-00000-of-00001"]
    for path in leftovers:
        path.write_text("partial")
    (tmp_path / "ckpt-2_temp").mkdir()
    leftovers.append(tmp_path / "ckpt-2_temp")
    resumed = Checkpoints(tmp_path, *_parts())
    assert resumed.restore_latest() == 1
    assert [p for p in leftovers if p.exists()] == []
    assert kept and all(p.exists() for p in kept)
    assert resumed.save(2, ROWS).endswith("ckpt-2")


def test_a_checkpoint_written_before_the_rows_travelled_in_it_still_resumes(tmp_path):
    """An older run's checkpoint holds the model, the optimizer and the epoch only: it
    restores (the rows None: the metrics file is read instead)."""
    import tensorflow as tf

    model, optimizer = _parts()
    epoch = tf.Variable(4, dtype=tf.int64, trainable=False)
    old = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    tf.train.CheckpointManager(old, str(tmp_path), max_to_keep=3).save(checkpoint_number=4)
    resumed = Checkpoints(tmp_path, *_parts())
    assert resumed.restore_latest() == 4
    assert resumed.rows is None
