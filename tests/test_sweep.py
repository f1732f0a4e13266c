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
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY, compose
from tripletlab import summarize
from tripletlab.summarize import CSV_COLUMNS, FINISHED
from tripletlab.sweep import (
    MAX_DIRNAME_BYTES,
    SweepSummary,
    job_dirname,
    parallel_jobs,
    parallel_threads,
    resume_overrides,
    update_sweep_summary,
)

SMALL = [*TINY, "dataset.max_train=256"]
MODELS = ("lenet", "small_cnn")
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
    """2 models x 3 strategies on digits, 1 epoch, through `python run.py -m` (once)."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "-m",
            *SMALL,
            f"model={','.join(MODELS)}",
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
        assert r["epochs"] == "1" and r["seed"] == "42" and r["learning_rate"] == "0.001"
        assert r["precision"] in ("off", "bfloat16")  # auto, resolved on this machine
        assert r["best_metric"] == "precision_at_1" and r["best_epoch"] == "1"
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
    assert summarize.main([str(sweep), "--out", str(tmp_path)]) == 0
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
    before = {d: (d / "metrics.csv").read_text() for d in dirs}
    # One job "killed" after its checkpoint: not finished, so it must resume, not restart.
    unfinished = dirs[0]
    summary = json.loads((unfinished / "summary.json").read_text())
    summary["status"] = "interrupted"
    (unfinished / "summary.json").write_text(json.dumps(summary))
    assert "hydra.sweep.dir" not in " ".join(resume_overrides(sweep))

    proc = _run(["bash", "sweep.sh", "--resume", str(sweep)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _job_dirs(sweep) == dirs  # same folders, no new ones
    for d in dirs:
        assert (d / "metrics.csv").read_text() == before[d], d  # no epoch trained again
        log = (d / "run.log").read_text()
        if d == unfinished:
            assert "resuming from" in log
        else:
            assert "already finished" in log
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 6 and all(r["status"] in FINISHED for r in rows)


# ------------------------------------------------- a failing job, in parallel (joblib)
@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """Two jobs at once with the joblib launcher; the absurd learning rate gives NaN.
    dataset.url (unused by digits) puts '/' in the folder names."""
    sweep = tmp_path_factory.mktemp("failing") / "sweep"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "-m",
            *SMALL,
            "model=lenet",
            "mining=batch_all",
            "sampler=random",
            "model.l2_normalize=false",
            "trainer.learning_rate=0.001,1e30",
            "dataset.url=https://example.org/mirror/",
            "hydra/launcher=parallel",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    return sweep, proc


def test_failed_job_is_recorded_and_the_sweep_exits_nonzero(failing_sweep):
    sweep, proc = failing_sweep
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
    sweep, _ = failing_sweep
    dirs = _job_dirs(sweep)
    assert len(dirs) == 2
    for d in dirs:
        assert d.parent == sweep
        assert "dataset.url=https\\:%2F%2Fexample.org%2Fmirror%2F" in d.name  # Hydra escapes ":"
        cfg = json.loads((d / "summary.json").read_text())["config"]
        assert cfg["trainer"]["threads"] == parallel_threads(2)


# -------------------------------------------------------------------------- Optuna
def test_optuna_search_on_the_returned_metric(tmp_path):
    sweep = tmp_path / "search"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "hparams_search=optuna",
            *SMALL,
            "model=lenet",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"trainer.learning_rate", "mining.margin"}
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 2 and all(r["status"] in FINISHED for r in rows)
    assert len({r["learning_rate"] for r in rows}) == 2
    assert max(float(r["precision_at_1"]) for r in rows) == pytest.approx(result["best_value"])
    assert all("hparams_search" not in d.name for d in _job_dirs(sweep))


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


# ------------------------------------------------------------------- sweep.sh
def test_sweep_sh_builds_the_grid_and_passes_overrides():
    proc = _run(["bash", "sweep.sh", "--dry-run", "dataset=digits", "seed=1,2,3"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\\,", ",")
    assert "run.py -m model=lenet,small_cnn mining=batch_all,batch_hard,semi_hard" in out
    assert out.rstrip().endswith("dataset=digits seed=1,2,3")
    one = _run(["bash", "sweep.sh", "-n", "model=lenet"], timeout=30).stdout.replace("\\,", ",")
    assert "model=lenet,small_cnn" not in one and "mining=batch_all,batch_hard" in one
    bad = _run(["bash", "sweep.sh", "--resume", str(ROOT / "conf")], timeout=30)
    assert bad.returncode == 2 and "multirun.yaml" in bad.stderr


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
def test_an_unexpected_error_in_a_sweep_job_is_recorded(tmp_path, monkeypatch, caplog):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import tripletlab.train
    from tripletlab.hydra_app import run_task

    cfg = compose(SMALL, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)

    def boom(cfg, run_dir):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tripletlab.train, "train", boom)
    task_cfg = compose(SMALL)
    with caplog.at_level("ERROR", logger="tripletlab"):
        value = run_task(task_cfg)
    assert math.isnan(value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: a bug"
    assert summary["config"]["dataset"]["name"] == "digits"
    assert "Traceback" in caplog.text and "a bug" in caplog.text


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


def _update(sweep: str, index: int) -> None:
    _fake_run(Path(sweep) / f"job{index}", "lenet", "semi_hard", index, 0.5, job=index)
    update_sweep_summary(sweep, "precision_at_1", plot=False)


def test_parallel_writers_never_lose_a_row(tmp_path):
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
    assert summarize.main([str(seeds_sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _csv(out / "summary.csv")
    assert len(rows) == 7 and [int(r["job"]) for r in rows] == list(range(7))
    assert [r["status"] for r in rows].count("failed") == 1

    groups = summarize.group_rows(summarize.collect_rows([seeds_sweep]), "precision_at_1")
    assert [len(g.rows) for g in groups] == [1, 3, 3]  # best first: the single lr=0.01 run
    lenet = groups[1]
    mean, std, n = lenet.stats["precision_at_1"]
    assert (mean, n) == (pytest.approx(0.8), 3)
    assert std == pytest.approx(statistics.stdev([0.7, 0.8, 0.9]))
    cnn = groups[2]
    assert cnn.stats["precision_at_1"][2] == 2 and cnn.status_text() == "2 ok, 1 failed"
    assert groups[0].label == "trainer.learning_rate=0.01" and lenet.label == ""

    md = (out / "summary.md").read_text()
    assert printed.startswith(md.splitlines()[0])
    assert "0.8000 ± 0.1000" in md and "0.5500 ± 0.0707" in md and "0.9500 " in md
    assert "| 1    | lenet     | semi_hard  | trainer.learning_rate=0.01" in md
    assert "loss became nan" in md  # failed runs are listed under the table
    assert (out / "summary.png").stat().st_size > 0


def test_summarize_metric_option_and_errors(seeds_sweep, tmp_path, capsys):
    assert (
        summarize.main([str(seeds_sweep / "j0"), str(seeds_sweep / "j3"), "--metric", "map_at_r"])
        == 0
    )
    assert (seeds_sweep / "summary.csv").is_file()  # default --out: the folder holding all PATHs
    assert "map_at_r (mean ± std)" in capsys.readouterr().out
    assert summarize.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert summarize.main([str(tmp_path / "empty")]) == 1
