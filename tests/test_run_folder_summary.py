"""summary.json as the rest of tripletlab reads it (tripletlab.run_folder): the cases
mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import pytest

from tripletlab.run_folder import RunFolder, RunFolderError, Status, build_summary
from tripletlab.summarize.rows import read_run

ROWS = [
    {"epoch": "1", "recall_at_1": "0.5", "epoch_seconds": "2.0", "images_per_second": "100"},
    {"epoch": "2", "recall_at_1": "0.6", "epoch_seconds": "3.0", "images_per_second": "120"},
]


def test_the_wall_time_a_run_records_is_what_the_summary_table_reads(tmp_path):
    """Bug: the key written under another name, the sweep table's column left empty (and
    a resumed run's wall time restarting from zero: the loop reads the same key)."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_summary(build_summary(Status.OK, ROWS, "recall_at_1", wall_seconds=12.34567))
    row = read_run(folder.summary_path)
    assert (row["wall_seconds"], row["train_seconds"], row["epochs_done"]) == (12.346, 5.0, 2)


@pytest.mark.parametrize(
    ("summary", "epochs", "finished"),
    [
        ({"status": "ok"}, 1, False),  # marked ok before any epoch was recorded
        ({"status": "ok", "epochs_done": None}, 1, False),
        ({"status": "ok", "epochs_done": 1}, 1, True),
        ({"status": "ok", "epochs_done": 1}, 2, False),
        ({"status": "collapsed", "epochs_done": 1}, 5, True),
        ({"status": "failed", "epochs_done": 3}, 3, False),
    ],
)
def test_a_run_is_finished_only_with_its_epochs_recorded(tmp_path, summary, epochs, finished):
    """Bug: a missing epoch count read as one epoch done: a one-epoch rerun is skipped."""
    folder = RunFolder(tmp_path)
    folder.write_summary(summary)
    assert folder.is_finished(epochs) is finished


def test_a_finished_run_without_its_model_says_how_to_write_it_again(tmp_path):
    """Bug: the rerun command lost from the message."""
    folder = RunFolder(tmp_path)
    folder.write_summary({"status": "ok", "epochs_done": 1})
    with pytest.raises(RunFolderError) as err:
        folder.require_model()
    assert f"run.py with the run's overrides and hydra.run.dir={tmp_path} writes it again" in str(
        err.value
    )


def test_the_summary_keeps_speed_precision_and_step_as_the_table_reads_them(tmp_path):
    """The median speed to 0.1 image/s, the precision the run used (the table's column) and
    the last row's step as an int."""
    rows = [{**ROWS[0], "images_per_second": "123.456", "step": "40.0"}]
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    summary = build_summary(Status.OK, rows, "recall_at_1", precision="bfloat16")
    assert summary["images_per_second"] == 123.5
    step = summary["metrics"]["step"]
    assert step == 40 and isinstance(step, int)
    folder.write_summary(summary)
    assert read_run(folder.summary_path)["precision"] == "bfloat16"


def test_a_garbled_metrics_file_is_rebuilt_with_a_warning_that_says_so(tmp_path, caplog):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.metrics_path.write_bytes(b"epoch,loss\n1,\xff\xfe\n")
    with caplog.at_level("WARNING", logger="tripletlab"):
        assert folder.read_metrics(rebuilt=True) == []
    assert f"{folder.metrics_path} is not a metrics file (" in caplog.text
    assert "; rebuilding it from the last checkpoint" in caplog.text


def test_a_run_folder_whose_parents_do_not_exist_yet_is_claimed(tmp_path):
    from tripletlab.run_folder import RunLock

    folder = RunFolder(tmp_path / "sweep" / "job0" / "run")
    with RunLock(folder) as lock:
        assert lock.path.is_file()
