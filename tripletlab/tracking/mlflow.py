"""``logger=mlflow``: a run as an MLflow run.

Params (the flattened config), per-epoch metrics, the summary, the plots and the model
folder as artifacts; one MLflow run per run folder (a resumed run continues its MLflow run),
named by its folder. ``logger.experiment`` names the experiment (a sweep's jobs get the sweep
folder from :mod:`tripletlab.hydra_app`). Credentials never come from the config
(:mod:`tripletlab.credentials`): MLflow reads ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` itself.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tripletlab.credentials import redact
from tripletlab.registry import TRACKERS
from tripletlab.run_folder import FINISHED, RunFolder, Status, as_float
from tripletlab.tracking.base import Tracker
from tripletlab.tracking.tensorboard import hparam_values

log = logging.getLogger("tripletlab")

# Where logger=mlflow keeps its runs when neither logger.tracking_uri nor
# $MLFLOW_TRACKING_URI names a server: a sqlite file (mlflow's file store refuses new runs).
DEFAULT_MLFLOW_DIR = "outputs"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


class MlflowTracker(Tracker):
    """The run as an MLflow run (``logger=mlflow``; see the module doc)."""

    name = "MLflow"

    def __init__(
        self,
        folder: RunFolder,
        config: Mapping[str, Any],
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None = None,
    ):
        self.folder = folder
        self.config = config  # redacted by make_trackers, like every tracker's
        self.tracking_uri = tracking_uri
        self.experiment = redact(experiment, "MLflow's experiment name")
        self.artifact_location = artifact_location
        self.client = None
        self.run_id: str | None = None

    def on_train_begin(self) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError(
                f"{err}; logger=mlflow needs: pip install 'tripletlab[mlflow]'"
            ) from None
        # After the import, which sets mlflow's level: its store lists migrations at INFO.
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment_id()
        run_dir = redact(str(self.folder.path.resolve()), "MLflow's run tags")
        quoted = run_dir.replace("\\", "\\\\").replace("'", "\\'")
        previous = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`tripletlab.run_dir` = '{quoted}'"
        )
        if previous:  # a resumed (or finished) run continues its MLflow run
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(
            experiment_id,
            run_name=redact(self.folder.path.name, "MLflow's run name"),
            tags={"tripletlab.run_dir": run_dir},
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        # MLflow refuses a param value over 6000 characters (a long list of class names).
        params = [Param(k, str(v)[:6000]) for k, v in hparam_values(self.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        except Exception:  # noqa: BLE001 - a parallel job created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [
            Metric(key, as_float(value), now, step)
            for key, value in row.items()
            if key not in ("epoch", "step") and not math.isnan(as_float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        status = str(summary.get("status"))
        best = summary.get("best") or {}
        self.client.set_tag(self.run_id, "tripletlab.status", status)
        if summary.get("error"):
            self.client.set_tag(self.run_id, "tripletlab.error", str(summary["error"])[:5000])
        if best.get("value") is not None:
            self.client.log_metric(self.run_id, f"best_{best['metric']}", float(best["value"]))
        folder = self.folder
        if folder.summary_path.is_file():
            self.client.log_artifact(self.run_id, str(folder.summary_path))
        if folder.metrics_path.is_file():
            self.client.log_artifact(self.run_id, str(folder.metrics_path))
        for path, name in ((folder.plots_dir, "plots"), (folder.model_dir, "model")):
            if path.is_dir() and any(path.iterdir()):
                self.client.log_artifacts(self.run_id, str(path), name)
        ended = {Status.INTERRUPTED.value: "KILLED", Status.RUNNING.value: "KILLED"}
        final = "FINISHED" if status in FINISHED else ended.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=final)


def mlflow_store(logger_cfg: Any) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments): ``logger.tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``, else a sqlite file under ``outputs/``. Artifacts go to
    ``outputs/mlartifacts`` unless a tracking server (http, https, databricks) or a file
    store keeps its own."""
    uri = getattr(logger_cfg, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    store = Path(DEFAULT_MLFLOW_DIR).resolve()
    artifacts = (store / MLFLOW_ARTIFACTS).as_uri()
    if uri:
        # A tracking server decides where artifacts go; with a database or file store the
        # client does, and MLflow's default is ./mlruns in whatever folder we run from.
        scheme = str(uri).split("://", 1)[0].lower() if "://" in str(uri) else "file"
        served = scheme in ("http", "https", "databricks") or scheme.startswith("databricks")
        return str(uri), None if served or scheme == "file" else artifacts
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / MLFLOW_DB}", artifacts


@TRACKERS.register("mlflow")
def mlflow_tracker(logger_cfg: Any, folder: RunFolder, config: Mapping[str, Any]) -> Tracker:
    uri, artifacts = mlflow_store(logger_cfg)
    experiment = getattr(logger_cfg, "experiment", None) or "tripletlab"
    return MlflowTracker(folder, config, uri, str(experiment), artifacts)
