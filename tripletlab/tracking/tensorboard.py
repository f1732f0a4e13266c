"""Everything tripletlab writes for TensorBoard: a run's scalars (``train/...``,
``eval/...``) and its HParams session (:class:`TensorBoardTracker`), a sweep's HParams
experiment (:func:`write_sweep_experiment`), and the projector (:mod:`.projector`).

The HParams records are written with TensorBoard's own event writer (no TensorFlow); the
scalars with ``tf.summary``, imported when the first epoch ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tripletlab.config import METRICS
from tripletlab.run_folder import FINISHED, RunFolder, as_float
from tripletlab.tracking.base import Tracker

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


class TensorBoardTracker(Tracker):
    """The run in its TensorBoard folder: each epoch's row as scalars at its step (tags by
    :func:`scalar_tag`, missing values skipped), and one HParams session."""

    name = "TensorBoard"

    def __init__(self, folder: RunFolder, config: Mapping[str, Any]):
        self.folder = folder.tensorboard_dir
        self.values = hparam_values(config)
        self.group = folder.path.name
        self.started = time.time()
        self._writer = None

    def on_train_begin(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_events(self.folder, [self._start()], SESSION_SUFFIX)

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.folder))
        with self._writer.as_default(step=int(row["step"])):
            for key, value in row.items():
                v = as_float(value)
                if key not in ("epoch", "step") and not math.isnan(v):
                    tf.summary.scalar(scalar_tag(key), v)
        self._writer.flush()

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        # Start and end in one file that replaces the last one: a resumed run ends once.
        end = session_end(str(summary.get("status")))
        write_events(self.folder, [self._start(), end], SESSION_SUFFIX)

    def _start(self) -> Any:
        return session_start(self.values, self.group, self.started)
