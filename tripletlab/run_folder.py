"""One run's folder: its paths, its status values and how its files are read and written.

This is the only module that knows the folder's layout (DESIGN.md, "One run's folder").
Training writes through it, and sweeps, summaries and the reuse commands read through it::

    <run dir>/
      .hydra/config.yaml, overrides.yaml, hydra.yaml   the record of the run, written once
      .hydra/data.yaml  the training data's fingerprint (run_record.py)
      metrics.csv      one row per epoch (METRIC_COLUMNS)
      summary.json     status, error, final metrics, best, timing, device, precision, config
      eval/<name>.json written by tripletlab-evaluate
      checkpoints/  tensorboard/ (scalars, HParams, projector)  plots/  model/embedding_model.keras

Every write is atomic (:mod:`tripletlab.io_utils`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tripletlab.config import METRICS
from tripletlab.errors import TripletLabError
from tripletlab.io_utils import atomic_write_csv, atomic_write_json
from tripletlab.lease_lock import LeaseLock, LockFileError, LockTimeout, read_holder

log = logging.getLogger("tripletlab")

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
MODEL_FILE = "embedding_model.keras"
HYDRA_DIR = ".hydra"
DATA_RECORD_FILE = "data.yaml"
FORCED_RESUMES_FILE = "forced_resumes.yaml"

# metrics.csv's columns, in order; the retrieval metrics are tripletlab.config.METRICS.
METRIC_COLUMNS = [
    "epoch",
    "step",
    "loss",
    "fraction_positive",
    "embedding_norm",
    "embedding_spread",
    "learning_rate",
    *METRICS,
    "epoch_seconds",
    "eval_seconds",
    "eval_queries",  # test queries the retrieval metrics ranked (a sample before the last epoch)
    "images_per_second",
]


class Status(str, enum.Enum):
    """A run's status in summary.json."""

    OK = "ok"
    FAILED = "failed"
    COLLAPSED = "collapsed"
    RUNNING = "running"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


# Runs that went to the end: their metrics are results (a collapse is one too).
FINISHED = (Status.OK.value, Status.COLLAPSED.value)


class RunFolderError(TripletLabError):
    """A folder is not a run folder, or the run lacks what is needed (its saved model)."""


class MetricsUnreadable(RunFolderError):
    """The run's metrics file is no CSV text (corrupt, or replaced by hand)."""


def as_float(value: Any) -> float:
    """``value`` as a float; NaN for None, "" and anything else that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class RunFolder:
    """The files of the run in ``path`` (which need not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def model_path(self) -> Path:
        return self.model_dir / MODEL_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def projector_dir(self) -> Path:
        # The projector lives in the TensorBoard folder: one TensorBoard run per run folder.
        return self.tensorboard_dir

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def export_dir(self) -> Path:
        """tripletlab-export's default folder (SavedModel, ONNX)."""
        return self.path / "export"

    @property
    def index_dir(self) -> Path:
        """tripletlab-index's nearest-neighbour index of a gallery."""
        return self.path / "index"

    @property
    def config_path(self) -> Path:
        return self.path / HYDRA_DIR / "config.yaml"

    @property
    def overrides_path(self) -> Path:
        return self.path / HYDRA_DIR / "overrides.yaml"

    @property
    def hydra_path(self) -> Path:
        return self.path / HYDRA_DIR / "hydra.yaml"

    @property
    def data_record_path(self) -> Path:
        """The training data's fingerprint, recorded with the config (:mod:`.run_record`)."""
        return self.path / HYDRA_DIR / DATA_RECORD_FILE

    @property
    def forced_resumes_path(self) -> Path:
        """What each ``trainer.resume=force`` changed, appended (:mod:`.run_record`)."""
        return self.path / HYDRA_DIR / FORCED_RESUMES_FILE

    def eval_path(self, name: str) -> Path:
        return self.eval_dir / f"{name}.json"

    # ------------------------------------------------------------- summary.json
    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict; {} if it is missing or unreadable."""
        try:
            loaded = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        return atomic_write_json(self.summary_path, dict(summary))

    @property
    def status(self) -> str | None:
        return self.read_summary().get("status")

    def is_finished(self, epochs: int) -> bool:
        """Whether the run went to the end: collapsed, or ok after ``epochs`` epochs."""
        summary = self.read_summary()
        status = summary.get("status")
        done = int(summary.get("epochs_done") or 0)
        return status == Status.COLLAPSED or (status == Status.OK and done >= epochs)

    def mark(self, status: Status, error: str | None, config: Mapping | None = None) -> Path:
        """Set summary.json's status and error, keeping what the run wrote before.

        Without a summary (the run failed before training started) a minimal one is
        written, with ``config``, so that a sweep's table still has the run's row.
        """
        summary = self.read_summary()
        summary["status"] = str(status)
        summary["error"] = error
        summary.setdefault("metrics", {})
        summary.setdefault("best", {"metric": None, "value": None, "epoch": None})
        if not summary.get("config") and config is not None:
            summary["config"] = dict(config)
        return self.write_summary(summary)

    # -------------------------------------------------------------- metrics.csv
    def read_metrics(self, rebuilt: bool = False) -> list[dict[str, str]]:
        """metrics.csv's rows (strings, as written); [] if there is none.
        :class:`MetricsUnreadable` when it is no CSV text (not UTF-8, a field past csv's
        limit); with ``rebuilt`` (training, which rebuilds it from its checkpoint) a
        warning and []."""
        if not self.metrics_path.exists():
            return []
        try:
            with self.metrics_path.open(newline="") as f:
                return list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as err:
            message = f"{self.metrics_path} is not a metrics file ({err})"
            if rebuilt:
                log.warning("%s; rebuilding it from the last checkpoint", message)
                return []
            raise MetricsUnreadable(
                f"{message}: rerun the run's command to rebuild it from its last checkpoint"
            ) from None

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write metrics.csv; a value that could not be computed (NaN) is an empty cell."""

        def cell(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        clean = [{key: cell(value) for key, value in row.items()} for row in rows]
        return atomic_write_csv(self.metrics_path, clean, METRIC_COLUMNS)

    # -------------------------------------------------------------------- model
    def require_model(self) -> Path:
        """The saved Keras model; an error naming the run's status if there is none."""
        if self.model_path.is_file():
            return self.model_path
        status = self.status
        shown = self.model_path.relative_to(self.path)
        what = f"run {self.path} has no saved model ({shown})"
        rerun = f"run.py with the run's overrides and hydra.run.dir={self.path}"
        if status in FINISHED:
            raise RunFolderError(
                f"{what}, although it finished ({status}): the file was removed; {rerun} "
                "writes it again from the last checkpoint"
            )
        why = f" (its status is {status!r})" if status else ""
        raise RunFolderError(
            f"{what}{why}: the model is saved when training finishes; finish the run first "
            f"({rerun} resumes it from its last checkpoint)"
        )

    # ---------------------------------------------------------------- checking
    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder at ``path``; an error if it is not one (no .hydra/config.yaml)."""
        folder = cls(Path(path).expanduser())
        run_dir = folder.path
        if not run_dir.exists():
            raise RunFolderError(f"run folder {run_dir} does not exist")
        if not run_dir.is_dir():
            raise RunFolderError(
                f"{run_dir} is not a folder: give the run folder that run.py wrote"
            )
        if folder.config_path.is_file():
            return folder
        config = Path(HYDRA_DIR) / "config.yaml"
        runs = sorted(p.parent.parent for p in run_dir.glob(f"*/{config}"))
        runs += sorted(p.parent.parent for p in run_dir.glob(f"*/*/{config}"))
        hint = (
            f"; it holds {len(runs)} run folder(s), e.g. {runs[0]}: give one of them"
            if runs
            else "; a run folder is what `python run.py` writes (outputs/runs/<date>/<time>/)"
        )
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {config}{hint}")


def find_summaries(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run's summary.json in or under ``paths`` (a path may be the file itself).

    Raises FileNotFoundError for a path that does not exist or is another file.
    """
    found: dict[Path, None] = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_file():
            if path.name != SUMMARY_FILE:
                raise FileNotFoundError(f"{path} is not a {SUMMARY_FILE} or a folder")
            found[path.resolve()] = None
            continue
        for f in sorted(path.rglob(SUMMARY_FILE)):
            found[f.resolve()] = None
    return list(found)


def summarize_rows(
    rows: Sequence[Mapping[str, Any]], metric: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(final metrics, best) for summary.json from metrics.csv-like rows.

    The final metrics are the last row's, with each retrieval metric the last evaluated
    value when the last epoch had none; NaN becomes None (missing, never 0).
    """
    evaluated = [r for r in rows if not math.isnan(as_float(r.get(metric)))]
    best_row = max(evaluated, key=lambda r: as_float(r[metric])) if evaluated else None
    final = dict(rows[-1]) if rows else {}
    for key in METRICS if rows else ():
        final.setdefault(key, None)
        if math.isnan(as_float(final.get(key))):
            last = [r for r in rows if not math.isnan(as_float(r.get(key)))]
            if last:
                final[key] = last[-1][key]
    clean = {}
    for key, value in final.items():
        v = as_float(value)
        clean[key] = None if math.isnan(v) else (int(v) if key in ("epoch", "step") else v)
    best = {
        "metric": metric,
        "value": as_float(best_row[metric]) if best_row else None,
        "epoch": int(as_float(best_row["epoch"])) if best_row else None,
    }
    return clean, best


def build_summary(
    status: Status | str,
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    error: str | None = None,
    wall_seconds: float = 0.0,
    device: str | None = None,
    precision: str | None = None,
    replicas: int = 1,
    config: Mapping | None = None,
) -> dict[str, Any]:
    """summary.json's content for a run whose epochs so far are ``rows`` (metrics.csv rows)."""
    import statistics

    metrics, best = summarize_rows(rows, metric)
    speeds = [as_float(r.get("images_per_second")) for r in rows]
    speeds = [s for s in speeds if not math.isnan(s)]
    return {
        "status": str(status),
        "error": error,
        "metrics": metrics,
        "best": best,
        "epochs_done": len(rows),
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(sum(as_float(r.get("epoch_seconds")) for r in rows), 3),
        "images_per_second": round(float(statistics.median(speeds)), 1) if speeds else None,
        "device": device,
        "precision": precision,
        "replicas": replicas,
        "config": dict(config) if config is not None else None,
    }


# ------------------------------------------------------------------ one process, one config
LOCK_FILE = ".lock"
# A holder refreshes its lock's time every LEASE_SECONDS / 4; a lock not refreshed for
# LEASE_SECONDS is stale even when its host cannot be asked (a dead host, a shared disk).
LEASE_SECONDS = 120.0


class RunFolderBusy(RunFolderError):
    """Another live process trains in this run folder."""


class RunFolderLocked(RunFolderBusy):
    """The folder's lock file is no lock this process can read or take over (a folder, a
    link, unreadable, immutable): the folder cannot be claimed until someone removes it."""


class RunConfigMismatch(RunFolderError):
    """A rerun into a folder whose saved run has another config or other data."""


class RunLock:
    """The claim of one process on a run folder: ``<run>/.lock``, a
    :class:`~tripletlab.lease_lock.LeaseLock` (host, pid, a lease refreshed while training).

    A second process is refused at once, with the holder's host and pid. A lock whose process
    is gone (this host) or whose lease expired (any host, a shared disk) is taken over.
    """

    def __init__(self, folder: RunFolder, lease_seconds: float = LEASE_SECONDS):
        self.path = folder.path / LOCK_FILE
        self._lock = LeaseLock(self.path, lease=lease_seconds, timeout=0.0)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def token(self) -> str | None:
        return self._lock.token

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_folder = "start this run in a new folder (hydra.run.dir=PATH, or no hydra.run.dir)"
        try:
            self._lock.acquire()
        except LockFileError as err:
            raise RunFolderLocked(
                f"run folder {self.path.parent} cannot be claimed: {err}; or {new_folder}"
            ) from None
        except LockTimeout:
            try:
                holder = read_holder(self.path)
            except LockFileError as err:  # replaced meanwhile
                raise RunFolderLocked(f"run folder {self.path.parent}: {err}") from None
            if holder is not None and holder.garbage:
                lease = self._lock.lease
                age = max(time.time() - holder.mtime, 0)
                raise RunFolderBusy(
                    f"run folder {self.path.parent} has a lock file, {self.path}, whose "
                    f"content is not a lock record (touched {age:.0f} s ago): if no process "
                    f"trains in this folder, remove it (rm {self.path}), or rerun after "
                    f"{max(lease - age, 0):.0f} s, when it counts as stale; or {new_folder}"
                ) from None
            who = (
                f"process {holder.pid} on host {holder.host}, last seen "
                f"{max(time.time() - holder.mtime, 0):.0f} s ago"
                if holder is not None and holder.pid
                else "another process (its lock file is being written)"
            )
            raise RunFolderBusy(
                f"run folder {self.path.parent} is in use by {who}: two processes must not "
                f"train into one folder. Wait for it to finish, or {new_folder}"
            ) from None

    def release(self) -> None:
        self._lock.release()
