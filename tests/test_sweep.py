"""Sweeps: the models x mining grid, summary.csv/.md/.png, failures, resume, launchers, search.

The real sweeps are tiny (digits, 256 training images, 1 epoch) and each starts once; the
aggregation tests use fabricated run folders.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    ROOT,
    checkpoint_numbers,
    compose,
    read_rows,
    simulate_kill,
    tiny,
)
from tripletlab import summarize
from tripletlab.cli import summarize as summarize_cli
from tripletlab.summarize import CSV_COLUMNS, FINISHED
from tripletlab.sweep import (
    LOCK_LEASE_SECONDS,
    LOCK_NAME,
    MAX_DIRNAME_BYTES,
    SweepSummary,
    job_dirname,
    parallel_jobs,
    parallel_threads,
    resume_overrides,
    update_sweep_summary,
)

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

MODELS = ("lenet", "small_cnn")


def small(model: str = "lenet", sampler: str = "pk") -> list[str]:
    """A tiny run on 256 digits (``model`` may be a sweep: "lenet,small_cnn")."""
    return [*tiny(model, sampler), "dataset.max_train=256"]


SMALL = small()
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")


def _run(args: list[str], timeout: int = 400, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/summary.json"))


# ------------------------------------------------------------------ the tiny real grid
@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 models x 3 strategies on digits, 2 epochs, through `python run.py -m` (once)."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "-m",
            *small(",".join(MODELS)),
            "trainer.epochs=2",
            f"mining={','.join(STRATEGIES)}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, proc


def test_grid_ends_with_one_row_per_job(grid):
    sweep, proc = grid
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 6
    assert list(rows[0]) == CSV_COLUMNS
    assert [int(r["job"]) for r in rows] == list(range(6))
    assert {(r["model"], r["mining"]) for r in rows} == {(m, s) for m in MODELS for s in STRATEGIES}
    for r in rows:
        assert r["status"] in FINISHED and r["error"] == "", r
        assert r["dataset"] == "digits" and r["sampler"] == "pk" and r["batch_size"] == "16"
        assert r["epochs"] == "2" and r["seed"] == "42" and r["learning_rate"] == "0.001"
        assert r["precision"] in ("off", "bfloat16")  # auto, resolved on this machine
        assert r["best_metric"] == "precision_at_1" and r["best_epoch"] in ("1", "2")
        for key in ["precision_at_1", "recall_at_8", "map_at_r", "knn_accuracy", "best_value"]:
            assert math.isfinite(float(r[key])), key
        assert float(r["train_seconds"]) > 0 and float(r["images_per_second"]) > 0
        assert "model=" in r["overrides"] and "mining=" in r["overrides"]
        assert (sweep / r["run_dir"] / "summary.json").is_file()
    assert (sweep / "summary.png").stat().st_size > 0
    md = (sweep / "summary.md").read_text()
    assert "precision_at_1 (mean ± std)" in md and md.count("| lenet") == 3
    # The table is printed at the end of the sweep.
    assert "precision_at_1 (mean ± std)" in proc.stdout
    assert f"summary: {sweep / 'summary.csv'}" in proc.stdout


def test_job_folders_are_named_by_their_overrides(grid):
    sweep, _ = grid
    dirs = _job_dirs(sweep)
    assert len(dirs) == 6
    for d in dirs:
        assert d.parent == sweep  # one folder per job, never nested
        assert len(d.name.encode()) <= MAX_DIRNAME_BYTES
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        for o in overrides:
            if o.split("=")[0] in ("model", "mining"):
                assert o in d.name.split(","), (o, d.name)
        assert "trainer.progress" not in d.name  # display settings do not name folders


def test_summarize_rebuilds_the_sweep_table(grid, tmp_path, capsys):
    sweep, _ = grid
    assert summarize_cli.main([str(sweep), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "precision_at_1 (mean ± std)" in printed and "small_cnn" in printed
    ours = _csv(tmp_path / "summary.csv")
    theirs = _csv(sweep / "summary.csv")
    drop = ("run_dir",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ours] == [
        {k: v for k, v in r.items() if k not in drop} for r in theirs
    ]
    assert all(Path(r["run_dir"]).is_absolute() for r in ours)  # outside --out: absolute
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "summary.png").is_file()


def test_rerun_skips_finished_jobs_and_resumes_unfinished_ones(grid, tmp_path):
    """`./sweep.sh --resume DIR` reruns the sweep's own overrides into DIR."""
    sweep = tmp_path / "sweep"
    shutil.copytree(grid[0], sweep)
    dirs = _job_dirs(sweep)
    # One job killed during epoch 2: only its epoch-1 checkpoint and row were written.
    unfinished = dirs[0]
    shutil.rmtree(unfinished)
    simulate_kill(grid[0] / unfinished.name, unfinished, rows_kept=1, checkpoints_kept=[1])
    before = {d: (d / "metrics.csv").read_text() for d in dirs}
    assert "hydra.sweep.dir" not in " ".join(resume_overrides(sweep))

    proc = _run(["bash", "sweep.sh", "--resume", str(sweep)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _job_dirs(sweep) == dirs  # same folders, no new ones
    for d in dirs:
        log = (d / "run.log").read_text()
        if d == unfinished:
            assert "resuming from" in log and "ckpt-1" in log
            rows = read_rows(d)
            assert [r["epoch"] for r in rows] == ["1", "2"]  # epoch 2 trained, once
            assert rows[0] == read_rows(grid[0] / d.name)[0]  # epoch 1 not trained again
            assert checkpoint_numbers(d) == [1, 2]
        else:
            assert (d / "metrics.csv").read_text() == before[d], d  # no epoch trained again
            assert "already finished" in log
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 6 and all(r["status"] in FINISHED for r in rows)


# ------------------------------------------------- a failing job, in parallel (joblib)
@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """Two jobs at once with the joblib launcher; the absurd learning rate gives NaN.
    An image folder dataset: its dataset.root puts '/' in the folder names."""
    from tests.helpers import write_image_folder

    root = tmp_path_factory.mktemp("failing")
    images = root / "images"
    write_image_folder(images, {c: 12 for c in "abcd"})
    sweep = root / "sweep"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "-m",
            *[o for o in small("lenet", sampler="random") if not o.startswith("dataset")],
            "dataset=image_folder",
            f"dataset.root={images}",
            "dataset.image_size=8",
            "trainer.batch_size=16",
            "mining=batch_all",
            "model.l2_normalize=false",
            "trainer.learning_rate=0.001,1e30",
            "hydra/launcher=parallel",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    return sweep, proc, images


def test_failed_job_is_recorded_and_the_sweep_exits_nonzero(failing_sweep):
    sweep, proc, _ = failing_sweep
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"1 of 2 jobs failed: see {sweep / 'summary.csv'}" in proc.stderr
    rows = {r["learning_rate"]: r for r in _csv(sweep / "summary.csv")}
    assert set(rows) == {"0.001", "1e+30"}
    assert rows["0.001"]["status"] == "ok" and rows["0.001"]["error"] == ""
    failed = rows["1e+30"]
    assert failed["status"] == "failed" and "training diverged" in failed["error"]
    assert failed["error"] in (sweep / failed["run_dir"] / "run.log").read_text()
    assert "did not finish" in (sweep / "summary.md").read_text()


def test_parallel_jobs_split_the_cores_and_slashes_stay_in_one_folder(failing_sweep):
    sweep, _, images = failing_sweep
    dirs = _job_dirs(sweep)
    assert len(dirs) == 2
    for d in dirs:
        assert d.parent == sweep
        assert f"dataset.root={str(images).replace('/', '%2F')}" in d.name
        cfg = json.loads((d / "summary.json").read_text())["config"]
        assert cfg["trainer"]["threads"] == parallel_threads(2)


# -------------------------------------------------------------------------- Optuna
def _search(sweep: Path, storage: str, n_trials: int) -> subprocess.CompletedProcess:
    proc = _run(
        [
            sys.executable,
            "run.py",
            "hparams_search=optuna",
            *SMALL,
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=tiny",
            f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def optuna_search(tmp_path_factory):
    """2 trials into a sqlite study whose folder does not exist yet."""
    root = tmp_path_factory.mktemp("optuna")
    db = root / "db" / "optuna.db"
    _search(root / "search", f"sqlite:///{db}", 2)
    return root / "search", db


def test_optuna_search_on_the_returned_metric_into_a_sqlite_study(optuna_search):
    import optuna

    sweep, db = optuna_search
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"trainer.learning_rate", "mining.margin"}
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 2 and all(r["status"] in FINISHED for r in rows)
    assert len({r["learning_rate"] for r in rows}) == 2
    assert max(float(r["precision_at_1"]) for r in rows) == pytest.approx(result["best_value"])
    assert all("hparams_search" not in d.name for d in _job_dirs(sweep))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    assert study.best_value == pytest.approx(result["best_value"])


@pytest.mark.slow
def test_a_rerun_continues_the_study_up_to_n_trials(optuna_search, tmp_path):
    """The 2-trial study rerun with n_trials=3: one more trial, not three."""
    import optuna

    _, db = optuna_search
    copy = tmp_path / "optuna.db"
    shutil.copy(db, copy)
    storage = f"sqlite:///{copy}"
    again = tmp_path / "again"
    _search(again, storage, 3)
    assert len(_job_dirs(again)) == 1
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # A new trial, not the first one replayed by the same seed.
    assert len({t.params["trainer.learning_rate"] for t in study.trials}) == 3
    _search(tmp_path / "none_left", storage, 3)  # nothing left to run: still a success
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 3


def test_optuna_storage_checks():
    from tripletlab.errors import ConfigError
    from tripletlab.search import check_storage_versions, sqlite_path

    with pytest.raises(ConfigError, match="SQLAlchemy>=1.4.24,<2"):
        check_storage_versions("2.10.1", "2.0.30")
    check_storage_versions("2.10.1", "1.4.54")
    check_storage_versions("3.6.0", "2.0.30")
    assert sqlite_path("sqlite:///outputs/optuna.db") == Path("outputs/optuna.db")
    assert sqlite_path("sqlite:////abs/o.db?timeout=9") == Path("/abs/o.db")
    assert sqlite_path("postgresql://host/db") is None


# ---------------------------------------------------------------- launcher configs
def test_launcher_and_search_configs_compose():
    slurm = compose(["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.partition is None and slurm.gpus_per_node == 1
    assert slurm.timeout_min > 0 and slurm.cpus_per_task >= 1 and slurm.max_num_timeout > 0

    parallel = compose(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2

    cfg = compose(["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.mode.name == "MULTIRUN"
    assert set(cfg.hydra.sweeper.params) >= {"trainer.learning_rate", "mining.margin"}
    assert cfg.optimized_metric == "precision_at_1"

    callbacks = compose([], return_hydra_config=True).hydra.callbacks
    assert callbacks.sweep_summary._target_ == "tripletlab.sweep.SweepSummary"


def test_slurm_config_prints_from_the_command_line():
    proc = _run([sys.executable, "run.py", "hydra/launcher=slurm", "--cfg", "hydra"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["gpus_per_node"] == 1 and launcher["partition"] is None


def test_parallel_thread_split():
    assert parallel_threads(2, cpus=16) == 8
    assert parallel_threads(4, cpus=2) == 1
    assert parallel_jobs({"n_jobs": 3}) == 3
    assert parallel_jobs({}) == 1
    assert parallel_jobs({"n_jobs": -1}) >= 1


# ------------------------------------------------------------- folder names
def test_job_dirname():
    assert job_dirname("mining=batch_all,model=lenet", 3) == "mining=batch_all,model=lenet"
    assert job_dirname("dataset.root=/data/x,model=lenet") == "dataset.root=%2Fdata%2Fx,model=lenet"
    assert job_dirname("", 4) == "4"
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    name = job_dirname(long)
    assert len(name.encode()) <= MAX_DIRNAME_BYTES and name.startswith("key0=value0,")
    assert name == job_dirname(long)  # the same on a rerun
    assert name != job_dirname(long + ",x=1")  # and unique
    assert "/" not in job_dirname("a=" + "é/" * 150)


# ------------------------------------------------ failures outside train, the callback
def test_an_unexpected_error_in_a_sweep_job_is_recorded(tmp_path, caplog):
    """A backbone that raises a plain RuntimeError when built: training records it once in
    summary.json, and the sweep job returns NaN with the traceback in its log."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tripletlab.hydra_app import run_task
    from tripletlab.registry import BACKBONES

    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "broken.yaml").write_text("name: broken\nembedding_size: 4\n")
    overrides = [*tiny("broken"), f"hydra.searchpath=[file://{conf}]"]
    run_dir = tmp_path / "job"

    @BACKBONES.register("broken")
    def broken(x, cfg, reg):
        raise RuntimeError("a bug")

    try:
        cfg = compose(overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with caplog.at_level("ERROR", logger="tripletlab"):
            value = run_task(compose(overrides))
    finally:
        BACKBONES.unregister("broken")
    assert math.isnan(value)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: a bug"
    assert summary["config"]["model"]["name"] == "broken"
    assert "Traceback" in caplog.text and caplog.text.count("RuntimeError: a bug") == 1


def _hydra_like(sweep: Path, job_dir: Path):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "optimized_metric": "precision_at_1",
            "hydra": {
                "mode": "MULTIRUN",
                "sweep": {"dir": str(sweep)},
                "runtime": {"output_dir": str(job_dir), "cwd": str(sweep)},
            },
        }
    )


def test_callback_records_failed_job_returns_and_exits_1(tmp_path, capsys):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import open_dict

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "a", "lenet", "semi_hard", 1, 0.9, job=0)
    config = _hydra_like(sweep, sweep / "b")
    with open_dict(config):
        config.hydra.mode = RunMode.MULTIRUN
    ret = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("broken"))
    callback = SweepSummary()
    callback.on_job_end(config=config, job_return=ret)
    rows = _csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["error"] == "ValueError: broken"
    with pytest.raises(SystemExit) as exit_info:
        callback.on_multirun_end(config=config)
    assert exit_info.value.code == 1
    assert f"1 of 2 jobs failed: see {sweep / 'summary.csv'}" in capsys.readouterr().err


@pytest.mark.parametrize("unfinished", ["interrupted", "running"])
def test_a_sweep_with_an_unfinished_job_exits_1(tmp_path, capsys, unfinished):
    """A job killed (interrupted) or still marked running is not finished: the sweep must
    not exit 0 with such a row in summary.csv, though no job failed."""
    from hydra.types import RunMode
    from omegaconf import open_dict

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "a", "lenet", "semi_hard", 1, 0.9, job=0)
    _fake_run(sweep / "b", "lenet", "batch_all", 1, 0.0, unfinished, "killed", job=1)
    _fake_run(sweep / "c", "small_cnn", "batch_hard", 1, 0.1, "collapsed", job=2)
    config = _hydra_like(sweep, sweep / "a")
    with open_dict(config):
        config.hydra.mode = RunMode.MULTIRUN
    with pytest.raises(SystemExit) as exit_info:
        SweepSummary(plot=False).on_multirun_end(config=config)
    assert exit_info.value.code == 1
    statuses = [r["status"] for r in _csv(sweep / "summary.csv")]
    assert statuses == ["ok", unfinished, "collapsed"]  # a collapse is finished
    err = capsys.readouterr().err
    assert f"1 of 3 jobs did not finish (1 {unfinished}): see {sweep / 'summary.csv'}" in err

    # With a failed job too: both counted, each by its status.
    _fake_run(sweep / "d", "lenet", "batch_hard", 1, 0.0, "failed", "loss became nan", job=3)
    with pytest.raises(SystemExit):
        SweepSummary(plot=False).on_multirun_end(config=config)
    expected = sorted([f"1 {unfinished}", "1 failed"])
    assert f"2 of 4 jobs did not finish ({', '.join(expected)})" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_sweep_records_the_job_and_exits_nonzero(tmp_path):
    """Ctrl-C during a real sweep's first job: its row says interrupted, the exit status is
    not 0, and no job after it starts."""
    import signal

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "-m",
            *SMALL,
            "trainer.epochs=200",
            "eval.every=100",
            "mining=batch_all,semi_hard",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = list(sweep.glob("*/metrics.csv"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 2:
            break  # an epoch is done: the job is training
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out[-3000:]
    rows = _csv(sweep / "summary.csv")
    assert [(r["mining"], r["status"]) for r in rows] == [("batch_all", "interrupted")], out[-3000:]


def _update(sweep: str, index: int) -> None:
    _fake_run(Path(sweep) / f"job{index}", "lenet", "semi_hard", index, 0.5, job=index)
    update_sweep_summary(sweep, "precision_at_1", plot=False)


def test_parallel_writers_never_lose_a_row(tmp_path):
    # The writers import TensorFlow (TensorBoard's event writer, for the sweep's HParams file)
    # under the lock, as a sweep job has already: imported here, the forked writers share it
    # instead of importing it one after the other (15 s each on a loaded machine).
    import tensorflow  # noqa: F401

    sweep = tmp_path / "sweep"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_update, args=(str(sweep), i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    rows = _csv(sweep / "summary.csv")
    assert sorted(int(r["job"]) for r in rows) == list(range(8))
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]


def _lock_left_by_a_killed_job_on(sweep: Path, host: str, age: float) -> Path:
    """The summary's lock as a job killed on another host (its pid unknowable here) left it,
    last touched ``age`` seconds ago."""
    lock = sweep / LOCK_NAME
    lock.write_text(f"host={host}\npidns=pid:[4026531836]\npid=31337\ntoken=feedfacecafebeef\n")
    stamp = time.time() - age
    os.utime(lock, (stamp, stamp))
    return lock


def test_a_stale_summary_lock_from_another_host_does_not_block_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "job0", "lenet", "semi_hard", 1, 0.5, job=0)
    lock = _lock_left_by_a_killed_job_on(sweep, "node-17", age=LOCK_LEASE_SECONDS + 60)
    start = time.monotonic()
    rows, _ = update_sweep_summary(sweep, "precision_at_1", plot=False, lock_timeout=30)
    assert time.monotonic() - start < 20  # the default lease, not the timeout
    assert list(rows["status"]) == ["ok"] and (sweep / "summary.csv").is_file()
    assert not lock.exists()


def test_a_held_summary_lock_ends_the_wait_with_one_message(tmp_path, capsys, caplog):
    """A job whose summary update times out still ends (with a warning); the sweep's end
    that cannot write the summary says so in one line and exits 1."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import open_dict

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "a", "lenet", "semi_hard", 1, 0.9, job=0)
    _lock_left_by_a_killed_job_on(sweep, "node-17", age=0)  # fresh: within its lease
    config = _hydra_like(sweep, sweep / "a")
    with open_dict(config):
        config.hydra.mode = RunMode.MULTIRUN
    callback = SweepSummary(plot=False, lock_timeout=0.5)
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="tripletlab"):
        callback.on_job_end(config=config, job_return=JobReturn(status=JobStatus.COMPLETED))
    assert time.monotonic() - start < 10
    assert "summary.csv not updated" in caplog.text and "node-17 pid 31337" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        callback.on_multirun_end(config=config)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert str(sweep / LOCK_NAME) in err and not (sweep / "summary.csv").exists()


# ---------------------------------------------------- aggregation over seeds (fabricated)
def _fake_run(
    run_dir: Path,
    model: str,
    mining: str,
    seed: int,
    p1: float,
    status: str = "ok",
    error: str | None = None,
    job: int | None = None,
    lr: float = 0.001,
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "dataset": {"name": "digits", "root": None},
        "model": {"name": model, "embedding_size": 8},
        "mining": {"strategy": mining, "margin": 0.2},
        "sampler": {"name": "pk", "classes_per_batch": 4, "images_per_class": 4},
        "trainer": {"epochs": 2, "batch_size": 64, "learning_rate": lr, "threads": seed},
        "seed": seed,
        "optimized_metric": "precision_at_1",
    }
    finished = status in FINISHED
    metrics = {m: (p1 if finished else None) for m in summarize.METRICS}
    metrics["map_at_r"] = p1 / 2 if finished else None
    summary = {
        "status": status,
        "error": error,
        "metrics": {"epoch": 2, **metrics},
        "best": {"metric": "precision_at_1", "value": p1 if finished else None, "epoch": 2},
        "epochs_done": 2,
        "wall_seconds": 3.0,
        "train_seconds": 2.0,
        "images_per_second": 100.0,
        "config": config,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    overrides = [f"model={model}", f"mining={mining}", f"seed={seed}"]
    if lr != 0.001:
        overrides.append(f"trainer.learning_rate={lr}")
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if job is not None:
        hydra = {"hydra": {"mode": "RunMode.MULTIRUN", "job": {"num": job}}}
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    return run_dir


@pytest.fixture
def seeds_sweep(tmp_path):
    """lenet/semi_hard x 3 seeds, small_cnn/batch_hard x 3 seeds (one failed), one single run."""
    sweep = tmp_path / "sweep"
    job = 0
    for model, mining, values in [
        ("lenet", "semi_hard", [0.7, 0.8, 0.9]),
        ("small_cnn", "batch_hard", [0.5, 0.6, None]),
    ]:
        for seed, value in enumerate(values, 1):
            if value is None:
                _fake_run(
                    sweep / f"j{job}", model, mining, seed, 0.0, "failed", "loss became nan", job
                )
            else:
                _fake_run(sweep / f"j{job}", model, mining, seed, value, job=job)
            job += 1
    _fake_run(sweep / f"j{job}", "lenet", "semi_hard", 1, 0.95, job=job, lr=0.01)
    return sweep


def test_summarize_reports_mean_std_and_n_over_seeds(seeds_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert summarize_cli.main([str(seeds_sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _csv(out / "summary.csv")
    assert len(rows) == 7 and [int(r["job"]) for r in rows] == list(range(7))
    assert [r["status"] for r in rows].count("failed") == 1

    groups = summarize.group_rows(summarize.collect_rows([seeds_sweep]), "precision_at_1")
    assert list(groups["runs"]) == [1, 3, 3]  # best first: the single lr=0.01 run
    lenet = groups.iloc[1]
    mean, std, n = (lenet[f"precision_at_1.{s}"] for s in ("mean", "std", "n"))
    assert (mean, n) == (pytest.approx(0.8), 3)
    assert std == pytest.approx(statistics.stdev([0.7, 0.8, 0.9]))
    cnn = groups.iloc[2]
    assert cnn["precision_at_1.n"] == 2 and cnn["status"] == "2 ok, 1 failed"
    assert groups["label"][0] == "trainer.learning_rate=0.01" and lenet["label"] == ""

    md = (out / "summary.md").read_text()
    assert printed.startswith(md.splitlines()[0])
    assert "0.8000 ± 0.1000" in md and "0.5500 ± 0.0707" in md and "0.9500 " in md
    assert "| 1      | lenet     | semi_hard  | trainer.learning_rate=0.01" in md
    assert "loss became nan" in md  # failed runs are listed under the table
    assert (out / "summary.png").stat().st_size > 0
