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


# ------------------------------------------------------------ one process, one config
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: RunFolder, host: str, pid: int, age: float = 0.0) -> None:
    import os
    import time

    from tripletlab.lease_lock import _pid_namespace
    from tripletlab.run_folder import LOCK_FILE

    path = folder.path / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"host={host}\npidns={_pid_namespace()}\npid={pid}\ntoken=t\n")
    old = time.time() - age
    os.utime(path, (old, old))


def _holder_token(lock) -> str:
    from tripletlab.lease_lock import read_holder

    return read_holder(lock.path).token


def test_a_second_process_is_refused_with_the_holders_host_and_pid(tmp_path):
    import os
    import socket

    from tripletlab.run_folder import RunFolderBusy, RunLock

    folder = RunFolder(tmp_path / "run")
    with RunLock(folder):
        with pytest.raises(RunFolderBusy) as err:
            RunLock(folder).acquire()
        assert f"process {os.getpid()} on host {socket.gethostname()}" in str(err.value)
    # Released: the next process takes it, and only its own lock is ever removed.
    with RunLock(folder) as lock:
        RunLock(folder).release()
        assert lock.path.exists()
    assert not lock.path.exists()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    import socket

    from tripletlab.run_folder import RunLock

    folder = RunFolder(tmp_path)
    _write_lock(folder, socket.gethostname(), _dead_pid())
    with RunLock(folder) as lock:
        assert _holder_token(lock) == lock.token


def test_another_hosts_lock_blocks_until_its_lease_expires(tmp_path):
    from tripletlab.run_folder import RunFolderBusy, RunLock

    folder = RunFolder(tmp_path)
    _write_lock(folder, "a-host-that-cannot-be-asked", 1, age=5.0)
    with pytest.raises(RunFolderBusy, match="a-host-that-cannot-be-asked"):
        RunLock(folder, lease_seconds=60).acquire()
    with RunLock(folder, lease_seconds=4) as lock:  # 5 s without a refresh: expired
        assert _holder_token(lock) == lock.token


def test_the_holder_keeps_its_lease_alive(tmp_path):
    import time

    from tripletlab.run_folder import RunFolderBusy, RunLock

    folder = RunFolder(tmp_path)
    with RunLock(folder, lease_seconds=0.4):
        time.sleep(1.0)  # more than two leases: only the refreshes keep it
        with pytest.raises(RunFolderBusy):
            RunLock(folder, lease_seconds=0.4).acquire()


def test_an_empty_lock_left_by_a_dead_writer_is_taken_over_after_its_lease(tmp_path):
    import os
    import time

    from tripletlab.run_folder import LOCK_FILE, RunFolderBusy, RunLock

    path = tmp_path / LOCK_FILE
    path.write_text("")
    with pytest.raises(RunFolderBusy, match="another process"):
        RunLock(RunFolder(tmp_path), lease_seconds=5).acquire()
    old = time.time() - 10
    os.utime(path, (old, old))
    with RunLock(RunFolder(tmp_path), lease_seconds=5) as lock:
        assert _holder_token(lock) == lock.token


def _previous_run(tmp_path, config: dict, status: str = "running") -> RunFolder:
    """A folder as a run leaves it: a checkpoint, its record (.hydra/config.yaml) and a
    summary carrying a copy of the config."""
    folder = RunFolder(tmp_path)
    folder.checkpoints_dir.mkdir(parents=True)
    (folder.checkpoints_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    folder.config_path.parent.mkdir()
    folder.config_path.write_text(json.dumps(config))  # JSON is YAML
    folder.write_summary({"status": status, "config": config})
    return folder


SAVED = {
    "seed": 42,
    "mining": {"strategy": "semi_hard", "margin": 0.5},
    "trainer": {"epochs": 2, "learning_rate": 0.001, "progress": "auto", "resume": "auto"},
    "eval": {"every": 1},
    "logger": {"name": "none"},
}


def _changed(**changes) -> dict:
    import copy

    config = copy.deepcopy(SAVED)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def test_a_rerun_with_another_config_is_refused_naming_every_difference(tmp_path):
    from tripletlab.run_folder import RunConfigMismatch
    from tripletlab.run_record import check_resume

    folder = _previous_run(tmp_path, SAVED)
    new = _changed(mining__strategy="batch_all", trainer__learning_rate=0.01, seed=7)
    with pytest.raises(RunConfigMismatch) as err:
        check_resume(folder, new, "auto")
    text = str(err.value)
    for line in (
        "mining.strategy: 'semi_hard' -> 'batch_all'",
        "trainer.learning_rate: 0.001 -> 0.01",
        "seed: 42 -> 7",
    ):
        assert line in text
    assert "hydra.run.dir" in text and "trainer.resume=force" in text
    check_resume(folder, new, "force")  # forced: resumes


def test_keys_that_do_not_change_what_is_trained_resume(tmp_path):
    from tripletlab.run_folder import RunConfigMismatch
    from tripletlab.run_record import check_resume

    folder = _previous_run(tmp_path, SAVED)
    same_training = _changed(
        trainer__epochs=5, trainer__progress="log", eval__every=3, logger__name="mlflow"
    )
    check_resume(folder, same_training, "auto")
    # A key that appears or disappears is a difference too.
    with pytest.raises(RunConfigMismatch, match=r"mining.squared: \(absent\) -> False"):
        check_resume(folder, {**SAVED, "mining": {**SAVED["mining"], "squared": False}}, "auto")


def test_resume_never_refuses_a_folder_that_holds_a_run(tmp_path):
    from tripletlab.run_folder import RunConfigMismatch
    from tripletlab.run_record import check_resume

    check_resume(RunFolder(tmp_path / "empty"), SAVED, "never")  # nothing there: fine
    with pytest.raises(RunConfigMismatch, match="trainer.resume=never"):
        check_resume(_previous_run(tmp_path / "run", SAVED, status="ok"), SAVED, "never")


def test_a_folder_without_a_record_of_its_config_is_not_resumed_silently(tmp_path):
    from tripletlab.run_folder import RunConfigMismatch
    from tripletlab.run_record import check_resume

    folder = _previous_run(tmp_path, SAVED)
    folder.config_path.unlink()  # summary.json still carries the config: it is no record
    with pytest.raises(RunConfigMismatch, match="no record of its config"):
        check_resume(folder, SAVED, "auto")


def test_only_the_record_counts_not_the_summarys_copy(tmp_path):
    """A hand-edited summary.json cannot let another config resume: .hydra/config.yaml is
    the one source a rerun compares with."""
    from tripletlab.run_folder import RunConfigMismatch
    from tripletlab.run_record import check_resume

    folder = _previous_run(tmp_path, SAVED)
    edited = _changed(mining__margin=0.9)
    folder.write_summary({"status": "running", "config": edited})
    with pytest.raises(RunConfigMismatch, match=r"mining.margin: 0.5 -> 0.9"):
        check_resume(folder, edited, "auto")
    assert check_resume(folder, SAVED, "auto") == []


def test_a_forced_resume_keeps_the_record_and_logs_its_changes_once(tmp_path):
    import yaml

    from tripletlab.run_record import claim

    folder = _previous_run(tmp_path, SAVED)
    record = folder.config_path.read_bytes()
    claimed = []
    for _ in range(2):  # the same forced command twice (say, rerun after a kill)
        claim(folder, _changed(mining__margin=0.3), "force", lambda: claimed.append(1))
    assert folder.config_path.read_bytes() == record  # a resume never rewrites it
    assert claimed == []  # nor Hydra's files
    log = yaml.safe_load(folder.forced_resumes_path.read_text())
    assert len(log) == 1 and log[0]["after_epoch"] == 1
    assert log[0]["changes"] == ["mining.margin: 0.5 -> 0.3"]


def test_a_folder_without_a_run_gets_the_record_once(tmp_path):
    import yaml

    from tripletlab.run_record import claim

    folder = RunFolder(tmp_path)
    claimed = []
    claim(folder, SAVED, "auto", lambda: claimed.append(1))
    assert yaml.safe_load(folder.config_path.read_text()) == SAVED
    assert claimed == [1]
