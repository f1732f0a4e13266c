"""Trackers: TensorBoard's HParams tab (through TensorBoard's own plugin) and MLflow (through
its own client), on one real 2-job digits sweep; a tracker that fails only warns."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, compose, tiny
from tripletlab import tracking
from tripletlab.run_folder import RunFolder
from tripletlab.tracking import tensorboard as _tensorboard  # noqa: F401

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

STRATEGIES = ("batch_all", "semi_hard")
ALL_STATUSES = ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING", "STATUS_UNKNOWN"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`python run.py -m mining=batch_all,semi_hard logger=mlflow`, run from a fresh folder
    without MLFLOW_TRACKING_URI: the store is that folder's outputs/mlflow.db."""
    cwd = tmp_path_factory.mktemp("tracked")
    folder = cwd / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # Where a password belongs: the environment. It must reach no file and no output.
    env["MLFLOW_TRACKING_USERNAME"] = "user"
    env["MLFLOW_TRACKING_PASSWORD"] = SENTINEL
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            *tiny("lenet"),
            "dataset.max_train=256",
            f"mining={','.join(STRATEGIES)}",
            "logger=mlflow",
            f"hydra.sweep.dir={folder}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p.parent for p in folder.glob("*/summary.json"))
    assert len(jobs) == 2
    return cwd, folder, jobs, proc


SENTINEL = "s3ntinel-PW"


def test_a_password_in_the_environment_reaches_no_file_and_no_output(sweep):
    cwd, _, _, proc = sweep
    assert SENTINEL not in proc.stdout + proc.stderr
    written = [p for p in cwd.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in written) and len(written) > 20
    assert [p for p in written if SENTINEL.encode() in p.read_bytes()] == []
    assert not (cwd / "mlruns").exists()


def test_mlflow_artifacts_stay_under_outputs_unless_a_server_decides(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tripletlab.tracking.mlflow import mlflow_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ours = (tmp_path / "outputs" / "mlartifacts").as_uri()
    for uri, artifacts in [
        (None, ours),
        (f"sqlite:///{tmp_path}/elsewhere.db", ours),  # MLflow's default: ./mlruns
        ("postgresql://db.example/mlflow", ours),
        ("http://127.0.0.1:5000", None),  # the server's artifact store
        (str(tmp_path / "file-store"), None),  # a file store keeps them inside
    ]:
        assert mlflow_store(SimpleNamespace(tracking_uri=uri))[1] == artifacts, uri


def _summary(job: Path) -> dict:
    return RunFolder(job).read_summary()


# ------------------------------------------------------------------ TensorBoard HParams
class TensorBoard:
    """TensorBoard's data provider and plugins on a logdir, called as the browser does."""

    def __init__(self, logdir: Path):
        from tensorboard import context
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from tensorboard.plugins import base_plugin
        from tensorboard.plugins.hparams import hparams_plugin

        multiplexer = plugin_event_multiplexer.EventMultiplexer()
        multiplexer.AddRunsFromDirectory(str(logdir))
        multiplexer.Reload()
        self.provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
        self.ctx = context.RequestContext()
        tb_context = base_plugin.TBContext(
            logdir=str(logdir), data_provider=self.provider, multiplexer=multiplexer
        )
        self.hparams = hparams_plugin.HParamsPlugin(tb_context).get_plugin_apps()

    def runs(self) -> list[str]:
        return sorted(r.run_name for r in self.provider.list_runs(self.ctx, experiment_id=""))

    def post(self, route: str, body: dict) -> dict:
        from werkzeug.test import Client

        response = Client(self.hparams[route]).post(
            route, data=json.dumps(body), content_type="application/json"
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return json.loads(response.get_data(as_text=True))


def test_each_job_is_one_tensorboard_run_with_scalars_hparams_and_projector(sweep):
    _, folder, jobs, _ = sweep
    board = TensorBoard(folder)
    # One run per job (its tensorboard/ folder); "." holds only the sweep's experiment.
    assert board.runs() == sorted([".", *(f"{j.name}/tensorboard" for j in jobs)])
    tags = board.provider.list_scalars(board.ctx, experiment_id="", plugin_name="scalars")
    run_tags = set(tags[f"{jobs[0].name}/tensorboard"])
    assert {"train/loss", "train/fraction_positive", "eval/precision_at_1"} <= run_tags
    assert all(t.startswith(("train/", "eval/")) for t in run_tags)

    from tests.helpers import ProjectorServer

    projector = ProjectorServer(folder, board.provider)
    (info,) = projector.json("/info", run=f"{jobs[0].name}/tensorboard")["embeddings"]
    assert info["tensorName"] == "digits test"  # readable: the dataset and split


def test_hparams_tab_lists_the_jobs_what_differs_and_the_optimized_metric(sweep):
    _, folder, jobs, _ = sweep
    board = TensorBoard(folder)
    experiment = board.post("/experiment", {"experimentName": ""})
    # Only what differs across the sweep: the mining strategy.
    (hparam,) = experiment["hparamInfos"]
    assert hparam["name"] == "mining.strategy" and hparam["differs"]
    assert sorted(hparam["domainDiscrete"]) == list(STRATEGIES)
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[0] == "eval/precision_at_1"  # optimized_metric first
    assert "optimized_metric" in experiment["metricInfos"][0]["displayName"]
    assert {"eval/map_at_r", "train/loss"} <= set(metrics)

    groups = board.post(
        "/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ALL_STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]
    assert len(groups) == 2  # one row per job
    by_name = {g["name"]: g for g in groups}
    for job in jobs:
        group = by_name[job.name]
        summary = _summary(job)
        config = summary["config"]
        assert group["hparams"]["mining.strategy"] == config["mining"]["strategy"]
        assert group["hparams"]["trainer.learning_rate"] == config["trainer"]["learning_rate"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        for key in ("precision_at_1", "map_at_r"):  # the run's final metrics
            assert values[f"eval/{key}"] == pytest.approx(summary["metrics"][key], rel=1e-6)
        (session,) = group["sessions"]
        assert session["status"] == "STATUS_SUCCESS"


def test_sweep_experiment_is_replaced_and_needs_a_difference(tmp_path):
    same = [{"model": {"name": "lenet"}, "seed": 1}] * 2
    assert not tracking.tensorboard.write_sweep_experiment(tmp_path, same, "map_at_r")
    assert not list(tmp_path.glob("events.*"))
    differ = [{"model": {"name": "lenet"}, "seed": s, "x": None} for s in (1, 2)]
    assert tracking.tensorboard.write_sweep_experiment(tmp_path, differ, "map_at_r")
    assert tracking.tensorboard.write_sweep_experiment(tmp_path, differ, "map_at_r")
    (event,) = tmp_path.glob("events.*")  # the second one replaced the first
    assert tracking.tensorboard.experiment_metrics("map_at_r")[0] == "eval/map_at_r"
    assert tracking.tensorboard.hparam_values({"a": {"b": None, "c": [1, 2]}, "d": 1.5}) == {
        "a.b": "null",
        "a.c": "[1, 2]",
        "d": 1.5,
    }


# ------------------------------------------------------------------------------ MLflow
def test_mlflow_store_holds_the_sweep(sweep):
    import mlflow
    from mlflow.tracking import MlflowClient

    cwd, folder, jobs, proc = sweep
    store = cwd / "outputs" / "mlflow.db"
    assert store.is_file()  # no MLFLOW_TRACKING_URI: the embedded store under outputs/
    assert "mlflow.store.db.utils" not in proc.stdout + proc.stderr  # its INFO lines stay quiet
    uri = f"sqlite:///{store}"
    mlflow.set_tracking_uri(uri)
    # The sweep's jobs share one experiment, named by the sweep folder.
    runs = mlflow.search_runs(experiment_names=["sweep"])
    assert len(runs) == 2
    assert sorted(runs["tags.mlflow.runName"]) == sorted(j.name for j in jobs)
    client = MlflowClient(uri)
    for job in jobs:
        row = runs[runs["tags.mlflow.runName"] == job.name].iloc[0]
        summary = _summary(job)
        assert row["status"] == "FINISHED" and row["tags.tripletlab.status"] == "ok"
        assert row["params.mining.strategy"] == summary["config"]["mining"]["strategy"]
        assert row["params.model.name"] == "lenet"
        assert row["metrics.precision_at_1"] == pytest.approx(summary["metrics"]["precision_at_1"])
        assert row["metrics.best_precision_at_1"] == pytest.approx(summary["best"]["value"])
        history = client.get_metric_history(row["run_id"], "loss")
        assert [m.step for m in history] == [1]  # one value per epoch
        files = {a.path for a in client.list_artifacts(row["run_id"])}
        assert {"summary.json", "metrics.csv", "plots", "model"} <= files
        model = {a.path for a in client.list_artifacts(row["run_id"], "model")}
        assert model == {"model/embedding_model.keras"}
        plots = {a.path for a in client.list_artifacts(row["run_id"], "plots")}
        assert "plots/loss.png" in plots
        assert row["artifact_uri"].startswith((cwd / "outputs").as_uri())


def test_a_failing_tracker_warns_and_the_run_goes_on(tmp_path, caplog):
    import tripletlab

    cfg = compose([*tiny("lenet"), "dataset.max_train=64", "logger=mlflow"])
    cfg.logger.tracking_uri = "nosuchscheme://nowhere"  # MLflow refuses it when starting
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        value = tripletlab.train(cfg, tmp_path / "run")
    assert value == value  # a number, not NaN: training went on
    assert RunFolder(tmp_path / "run").read_summary()["status"] == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if w.startswith("MLflow failed")], warnings


def test_a_tracker_that_fails_later_is_switched_off(caplog):
    class Flaky(tracking.Tracker):
        name = "Flaky"
        calls = 0

        def on_epoch_end(self, row):
            self.calls += 1
            raise OSError("disk full")

    from tripletlab.training.callbacks import Callbacks

    flaky = Flaky()
    guarded = Callbacks()
    guarded.extend([flaky], guarded=True)  # how training adds trackers
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        guarded.on_train_begin()
        guarded.on_epoch_end({"epoch": 1})
        guarded.on_epoch_end({"epoch": 2})
        guarded.on_train_end({})
    assert flaky.calls == 1  # off after the first failure
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "Flaky failed (OSError: disk full)" in record.getMessage()


def test_the_optuna_and_mlflow_extras_resolve_together():
    """Both extras pin the same SQLAlchemy (optuna 2.10's storage fails on 2.x), and what is
    installed satisfies every requirement of both: `pip install -e ".[optuna,mlflow]"`."""
    from importlib.metadata import version

    import tomllib
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    required = {name: [Requirement(line) for line in extras[name]] for name in ("optuna", "mlflow")}
    pins = {
        name: {str(r.specifier) for r in reqs if r.name == "SQLAlchemy"}
        for name, reqs in required.items()
    }
    assert pins["optuna"] == pins["mlflow"] and pins["optuna"], pins
    for reqs in required.values():
        for req in reqs:
            assert version(req.name) in req.specifier, (req, version(req.name))
    from tripletlab.search import check_storage_versions

    check_storage_versions(version("optuna"), version("SQLAlchemy"))  # no ConfigError


def test_a_resumed_run_is_one_session_that_ends_once(tmp_path):
    """Interrupted, then resumed to the end: one session, ended with success."""
    folder = RunFolder(tmp_path / "run")
    config = {"model": {"name": "lenet"}, "trainer": {"learning_rate": 0.01}}
    for status in ("interrupted", "ok"):
        tracker = tracking.tensorboard.TensorBoardTracker(folder, config)
        tracker.on_train_begin()
        tracker.on_train_end({"status": status})
    (events,) = folder.tensorboard_dir.glob("events.*")  # the last one replaced the first
    board = TensorBoard(tmp_path)
    groups = board.post(
        "/session_groups",
        {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 9},
    )["sessionGroups"]
    (group,) = groups
    assert group["name"] == "run" and group["hparams"]["trainer.learning_rate"] == 0.01
    assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]


def test_scalar_tags_group_evaluation_columns_apart_from_training():
    from tripletlab.tracking.tensorboard import scalar_tag

    for key in ("precision_at_1", "knn_accuracy", "eval_seconds", "eval_queries"):
        assert scalar_tag(key) == f"eval/{key}"
    for key in ("loss", "fraction_positive", "epoch_seconds", "images_per_second"):
        assert scalar_tag(key) == f"train/{key}"


def test_tensorboard_scalars_skip_missing_values(tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = tracking.tensorboard.TensorBoardTracker(RunFolder(tmp_path), {})
    tracker.on_epoch_end({"epoch": 1, "step": 10, "loss": 0.5, "precision_at_1": ""})
    tracker.on_epoch_end({"epoch": 2, "step": 20, "loss": 0.25, "precision_at_1": 0.75})
    tracker.on_train_end({"status": "ok"})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()

    def series(tag):
        return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]

    assert series("train/loss") == [(10, 0.5), (20, 0.25)]
    assert series("eval/precision_at_1") == [(20, 0.75)]
