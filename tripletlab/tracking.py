"""Where a run reports besides its folder: TensorBoard's HParams tab and, as an option, MLflow.

Training calls :func:`start_trackers` before the first epoch, passes the trackers to the
loop as epoch callbacks (``on_epoch_end(row)``) and calls :func:`finish_trackers` once the
run's summary is final, whatever happened (a failure, Ctrl-C):

- :class:`HParamsTracker` (always): the run is one TensorBoard HParams session in its
  ``tensorboard/`` folder: the flattened config as hparams, the ``eval/...`` and
  ``train/...`` scalars as metrics (TensorBoard shows each one's last value), the status at
  the end. For a sweep, :func:`write_sweep_experiment` (called by the sweep summary callback)
  adds the experiment to the sweep folder: the hparams that differ across its jobs and the
  metrics, ``optimized_metric`` first.
- :class:`MlflowTracker` (``logger=mlflow``): params, per-epoch metrics, the summary, the
  plots and the model folder as artifacts; one MLflow run per run folder (a resumed run
  continues its MLflow run), named by its folder; a sweep's jobs share one experiment named
  by the sweep folder.

A tracker that fails never fails the run: the error is logged as a warning and the tracker
is switched off. Nothing here imports TensorFlow (event files are written with
TensorBoard's own writer).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tripletlab.config import METRICS
from tripletlab.run_folder import FINISHED, RunFolder, Status, as_float

log = logging.getLogger("tripletlab")

# Where logger=mlflow keeps its runs when neither logger.tracking_uri nor
# $MLFLOW_TRACKING_URI names a server: a sqlite file (mlflow's file store refuses new runs).
DEFAULT_MLFLOW_DIR = "outputs"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
EXPERIMENT_SUFFIX = ".hparams-experiment"
SESSION_SUFFIX = ".hparams"


def scalar_tag(key: str) -> str:
    """A metrics row's key as a TensorBoard tag: ``eval/<metric>`` for the retrieval metrics
    and the evaluation's time and query count, ``train/<key>`` for the rest (loss, fraction,
    speed...)."""
    evaluation = key in METRICS or key in ("eval_seconds", "eval_queries")
    return f"eval/{key}" if evaluation else f"train/{key}"


# ------------------------------------------------------------------------ HParams
def hparam_value(value: Any) -> bool | int | float | str:
    """A config value as an HParams value (a bool, a number or text; None is "null")."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def hparam_values(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat HParams values: {"trainer.learning_rate": 0.001, ...}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(hparam_values(value, f"{name}."))
        else:
            out[name] = hparam_value(value)
    return out


def _hparams_summary(tag: str, plugin_data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=metadata.create_summary_metadata(plugin_data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def write_events(folder: Path, summaries: Sequence[Any], suffix: str) -> None:
    """``summaries`` as the one event file of ``folder`` ending in ``suffix``: earlier ones
    are deleted (TensorBoard keeps the first value of a tag's metadata, so a session's end
    status or a sweep's experiment can only be replaced by replacing its file). The scalars'
    event files are left alone."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for old in Path(folder).glob(f"events.out.tfevents.*{suffix}"):
        with contextlib.suppress(OSError):
            old.unlink()
    if not summaries:
        return
    writer = EventFileWriter(str(folder), filename_suffix=suffix)
    try:
        for summary in summaries:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    finally:
        writer.close()


def session_start(values: Mapping[str, Any], name: str, start_time: float) -> Any:
    """The HParams session start summary: hparams ``values``, group ``name``."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=name, start_time_secs=start_time)
    for key, value in values.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(
        session_start_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, data)


def session_end(status: str) -> Any:
    """The HParams session end summary: success for a finished run (ok, collapsed)."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = api_pb2.STATUS_SUCCESS if status in FINISHED else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=info, version=metadata.PLUGIN_DATA_VERSION
    )
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, data)


def experiment_metrics(metric: str) -> list[str]:
    """The HParams metric tags: the optimised metric first, the other metrics, the loss."""
    return list(dict.fromkeys([scalar_tag(metric), *map(scalar_tag, METRICS), "train/loss"]))


def write_sweep_experiment(
    sweep_dir: str | os.PathLike, configs: Sequence[Mapping[str, Any]], metric: str
) -> bool:
    """The HParams experiment of a sweep in ``sweep_dir``: the hparams whose values differ
    across the jobs' ``configs`` and the metrics, ``metric`` first. Replaces the previous
    one; False (and nothing written) while no hparam differs."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    runs = [hparam_values(c) for c in configs if isinstance(c, Mapping)]
    names = sorted({k for values in runs for k in values})
    infos = []
    for name in names:
        values = [v[name] for v in runs if name in v]
        distinct = {(type(v).__name__, v) for v in values}
        if len(distinct) < 2 and len(values) == len(runs):
            continue
        info = api_pb2.HParamInfo(name=name, differs=True)
        if all(isinstance(v, bool) for v in values):
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.extend(sorted(set(values)))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(min(values))
            info.domain_interval.max_value = float(max(values))
        elif all(isinstance(v, str) for v in values):
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted(set(values)))
        infos.append(info)
    folder = Path(sweep_dir)
    if not infos:
        write_events(folder, [], EXPERIMENT_SUFFIX)
        return False
    metric_infos = [
        api_pb2.MetricInfo(
            name=api_pb2.MetricName(tag=tag),
            display_name=f"{tag} (optimized_metric)" if i == 0 else tag,
        )
        for i, tag in enumerate(experiment_metrics(metric))
    ]
    experiment = api_pb2.Experiment(
        description=f"sweep {folder.name}: {len(runs)} jobs",
        hparam_infos=infos,
        metric_infos=metric_infos,
        time_created_secs=time.time(),
    )
    data = plugin_data_pb2.HParamsPluginData(
        experiment=experiment, version=metadata.PLUGIN_DATA_VERSION
    )
    write_events(folder, [_hparams_summary(metadata.EXPERIMENT_TAG, data)], EXPERIMENT_SUFFIX)
    return True


# ------------------------------------------------------------------------ trackers
class Tracker:
    """What training calls: :meth:`start`, ``on_epoch_end(row)`` each epoch, :meth:`finish`
    with the final summary."""

    name = "tracker"

    def start(self) -> None:
        pass

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass


class HParamsTracker(Tracker):
    """The run as one HParams session in its TensorBoard folder (see the module doc)."""

    name = "TensorBoard HParams"

    def __init__(self, folder: RunFolder, config: Mapping[str, Any]):
        self.folder = folder.tensorboard_dir
        self.values = hparam_values(config)
        self.group = folder.path.name
        self.started = time.time()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_events(self.folder, [self._start()], SESSION_SUFFIX)

    def finish(self, summary: Mapping[str, Any]) -> None:
        # Start and end in one file that replaces the last one: a resumed run ends once.
        end = session_end(str(summary.get("status")))
        write_events(self.folder, [self._start(), end], SESSION_SUFFIX)

    def _start(self) -> Any:
        return session_start(self.values, self.group, self.started)


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
        self.config = config
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.client = None
        self.run_id: str | None = None

    def start(self) -> None:
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
        run_dir = str(self.folder.path.resolve())
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
            run_name=self.folder.path.name,
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

    def finish(self, summary: Mapping[str, Any]) -> None:
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


class Guarded:
    """A tracker whose errors are warnings: the first one switches it off."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.failed = False

    def _call(self, what: str, *args: Any) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, what)(*args)
        except Exception as err:  # noqa: BLE001 - a tracker never fails the run
            self.failed = True
            log.warning(
                "%s failed (%s: %s); the run goes on without it",
                self.tracker.name,
                type(err).__name__,
                err,
            )

    def start(self) -> None:
        self._call("start")

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self._call("on_epoch_end", row)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._call("finish", summary)


# ------------------------------------------------------------------ building them
def _plain_config(cfg: Any) -> dict:
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg)


def _hydra_sweep() -> Path | None:
    """The sweep folder when this process runs a Hydra sweep's job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        from tripletlab.sweep import sweep_dir

        return sweep_dir(hydra_cfg)
    except Exception:  # noqa: BLE001 - no Hydra: a single run
        return None


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


def experiment_name(logger_cfg: Any) -> str:
    """``logger.experiment``, else the sweep folder (relative to the working directory when
    inside it) for a sweep's jobs, else "tripletlab"."""
    name = getattr(logger_cfg, "experiment", None)
    if name:
        return str(name)
    sweep = _hydra_sweep()
    if sweep is None:
        return "tripletlab"
    with contextlib.suppress(ValueError):
        return str(sweep.resolve().relative_to(Path.cwd().resolve()))
    return str(sweep.resolve())


def start_trackers(cfg: Any, folder: RunFolder) -> list[Guarded]:
    """The run's trackers, started (a failure to start is a warning); none on a
    multi-worker run's non-chief workers, which write nothing."""
    from tripletlab.distribute import task_is_chief

    try:
        if not task_is_chief(cfg.distribute):
            return []
        config = _plain_config(cfg)
        trackers: list[Tracker] = [HParamsTracker(folder, config)]
        logger_cfg = getattr(cfg, "logger", None)
        if logger_cfg is not None and str(logger_cfg.name) == "mlflow":
            uri, artifacts = mlflow_store(logger_cfg)
            name = experiment_name(logger_cfg)
            trackers.append(MlflowTracker(folder, config, uri, name, artifacts))
    except Exception as err:  # noqa: BLE001 - a tracker never fails the run
        name = type(err).__name__
        log.warning("trackers failed (%s: %s); the run goes on without them", name, err)
        return []
    guarded = [Guarded(t) for t in trackers]
    for tracker in guarded:
        tracker.start()
    return guarded


def finish_trackers(trackers: Sequence[Guarded], folder: RunFolder) -> None:
    """Hand each tracker the run's final summary (read back from its folder)."""
    if not trackers:
        return
    summary = folder.read_summary()
    for tracker in trackers:
        tracker.finish(summary)
