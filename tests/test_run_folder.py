"""The run folder's contract: paths, statuses, summary and metrics files, missing values."""

from __future__ import annotations

import json

import pytest

from tripletlab.run_folder import (
    FINISHED,
    METRIC_COLUMNS,
    RunFolder,
    RunFolderError,
    Status,
    build_summary,
    find_summaries,
)


def test_layout_matches_the_design(tmp_path):
    f = RunFolder(tmp_path)
    assert f.summary_path == tmp_path / "summary.json"
    assert f.metrics_path == tmp_path / "metrics.csv"
    assert f.model_path == tmp_path / "model" / "embedding_model.keras"
    assert f.config_path == tmp_path / ".hydra" / "config.yaml"
    assert f.eval_path("x") == tmp_path / "eval" / "x.json"
    assert [s.value for s in Status] == ["ok", "failed", "collapsed", "running", "interrupted"]
    assert FINISHED == ("ok", "collapsed")


def test_metrics_round_trip_with_missing_cells(tmp_path):
    f = RunFolder(tmp_path)
    f.write_metrics(
        [
            {"epoch": 1, "step": 5, "loss": 0.5, "map_at_r": float("nan")},
            {"epoch": 2, "step": 10, "loss": 0.25},
        ]
    )
    rows = f.read_metrics()
    assert list(rows[0]) == METRIC_COLUMNS
    assert [r["loss"] for r in rows] == ["0.5", "0.25"]
    assert rows[0]["precision_at_1"] == ""
    assert rows[0]["map_at_r"] == ""  # could not be computed: missing, never "nan" or 0
    with pytest.raises(ValueError):  # an unknown column is a bug, not silently dropped
        f.write_metrics([{"epoch": 1, "bogus": 1}])


def test_summary_takes_the_last_evaluated_metrics_and_reports_missing_as_none():
    rows = [
        {"epoch": 1, "step": 5, "loss": 0.4, "precision_at_1": 0.7, "map_at_r": 0.5,
         "epoch_seconds": 2.0, "images_per_second": 100.0},
        {"epoch": 2, "step": 10, "loss": 0.3, "precision_at_1": 0.9, "map_at_r": 0.6,
         "epoch_seconds": 3.0, "images_per_second": 900.0},
        {"epoch": 3, "step": 15, "loss": 0.2, "precision_at_1": "", "map_at_r": "",
         "epoch_seconds": 4.0, "images_per_second": 200.0},
    ]  # fmt: skip
    s = build_summary(Status.OK, rows, "precision_at_1", wall_seconds=12.5, device="CPU")
    assert s["status"] == "ok" and s["error"] is None
    assert s["metrics"]["epoch"] == 3 and s["metrics"]["loss"] == 0.2
    assert s["metrics"]["precision_at_1"] == 0.9  # epoch 3 was not evaluated: epoch 2's
    assert s["metrics"]["knn_accuracy"] is None  # never computed: missing, not 0
    assert s["best"] == {"metric": "precision_at_1", "value": 0.9, "epoch": 2}
    assert s["epochs_done"] == 3 and s["train_seconds"] == 9.0
    assert s["images_per_second"] == 200.0  # the median
    assert s["replicas"] == 1


@pytest.mark.parametrize(
    ("speeds", "median"),
    [
        # The first epoch traces the step (slow), one ran beside another job (fast): the
        # median is the typical epoch's speed (the mean, 1212 and 765, is not).
        ([50.0, 1000.0, 1020.0, 990.0, 3000.0], 1000.0),
        ([50.0, 1000.0, 1020.0, 990.0], 995.0),  # an even count: the middle two's mean
        ([50.0, "", 990.0, 1000.0], 990.0),  # a missing cell is skipped, not a 0
    ],
)
def test_summary_images_per_second_is_the_median_epoch(speeds, median):
    rows = [
        {"epoch": e, "step": 5 * e, "loss": 0.1, "epoch_seconds": 1.0, "images_per_second": v}
        for e, v in enumerate(speeds, start=1)
    ]
    assert build_summary(Status.OK, rows, "map_at_r")["images_per_second"] == median


def test_summary_of_no_epochs_has_no_best():
    s = build_summary(Status.FAILED, [], "map_at_r", error="boom")
    assert s["metrics"] == {} and s["best"]["value"] is None and s["epochs_done"] == 0


def test_mark_keeps_what_the_run_wrote(tmp_path):
    f = RunFolder(tmp_path)
    f.write_summary({"status": "running", "epochs_done": 2, "metrics": {"loss": 0.1}})
    f.mark(Status.FAILED, "it broke", config={"seed": 1})
    s = json.loads(f.summary_path.read_text())
    assert (s["status"], s["error"], s["epochs_done"]) == ("failed", "it broke", 2)
    assert s["metrics"] == {"loss": 0.1} and s["config"] == {"seed": 1}


def test_mark_without_a_summary_writes_a_minimal_one(tmp_path):
    f = RunFolder(tmp_path / "new")
    f.mark(Status.INTERRUPTED, "stopped")
    assert f.read_summary()["status"] == "interrupted"
    assert f.read_summary()["best"] == {"metric": None, "value": None, "epoch": None}


def test_unreadable_summary_reads_as_empty(tmp_path):
    f = RunFolder(tmp_path)
    f.summary_path.write_text("{not json")
    assert f.read_summary() == {} and f.status is None


def test_is_finished(tmp_path):
    f = RunFolder(tmp_path)
    assert not f.is_finished(3)
    f.write_summary({"status": "ok", "epochs_done": 2})
    assert not f.is_finished(3) and f.is_finished(2)
    f.write_summary({"status": "collapsed", "epochs_done": 1})
    assert f.is_finished(3)


def test_existing_explains_what_a_run_folder_is(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        RunFolder.existing(tmp_path / "nope")
    run = tmp_path / "sweep" / "job0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RunFolderError, match="holds 1 run folder"):
        RunFolder.existing(tmp_path / "sweep")
    assert RunFolder.existing(run).path == run


def test_require_model_names_the_status(tmp_path):
    f = RunFolder(tmp_path)
    f.write_summary({"status": "running"})
    with pytest.raises(RunFolderError, match="'running'.*finish the run first"):
        f.require_model()
    f.write_summary({"status": "ok"})
    with pytest.raises(RunFolderError, match="although it finished"):
        f.require_model()


def test_find_summaries(tmp_path):
    for job in ("a", "b/c"):
        RunFolder(tmp_path / job).write_summary({"status": "ok"})
    found = find_summaries([tmp_path])
    assert sorted(p.parent.name for p in found) == ["a", "c"]
    with pytest.raises(FileNotFoundError):
        find_summaries([tmp_path / "missing"])
