"""Reading runs: one row per run folder's summary, as a pandas frame (:func:`collect_rows`).

Each run summary (:mod:`tripletlab.run_folder`) is flattened by ``pandas.json_normalize``
(``config.model.name``, ``metrics.map_at_r``...); :data:`CSV_COLUMNS` are the columns of
``summary.csv``. A ``summary.csv`` written earlier can stand for its runs (their folders may
be gone, or on another machine): its rows are read back (:func:`read_csv_runs`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tripletlab.config import METRICS
from tripletlab.io_utils import escape_name, read_yaml
from tripletlab.run_folder import RunFolder, Status, find_summaries

CSV_COLUMNS = [
    "job",
    "overrides",
    "dataset",
    "model",
    "mining",
    "sampler",
    "margin",
    "batch_size",
    "learning_rate",
    "epochs",
    "precision",
    "seed",
    "status",
    "error",
    *METRICS,
    "best_metric",
    "best_value",
    "best_epoch",
    "epochs_done",
    "train_seconds",
    "wall_seconds",
    "images_per_second",
    "run_dir",
]

# summary.csv columns read straight from a flattened run summary (json_normalize's names).
_FROM_SUMMARY = {
    "dataset": "config.dataset.name",
    "model": "config.model.name",
    "mining": "config.mining.strategy",
    "sampler": "config.sampler.name",
    "margin": "config.mining.margin",
    "learning_rate": "config.trainer.learning_rate",
    "epochs": "config.trainer.epochs",
    "seed": "config.seed",
    **{m: f"metrics.{m}" for m in METRICS},
    "best_metric": "best.metric",
    "best_value": "best.value",
    "best_epoch": "best.epoch",
    "epochs_done": "epochs_done",
    "train_seconds": "train_seconds",
    "wall_seconds": "wall_seconds",
    "images_per_second": "images_per_second",
}


def _job_info(run_dir: Path) -> tuple[int | None, list[str]]:
    """Hydra's job number (sweeps only) and the run's task overrides, from ``.hydra/``."""
    folder = RunFolder(run_dir)
    overrides = read_yaml(folder.overrides_path)
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    hydra_cfg = read_yaml(folder.hydra_path)
    job = None
    if isinstance(hydra_cfg, dict):
        hydra = hydra_cfg.get("hydra") or {}
        if str(hydra.get("mode", "")).endswith("MULTIRUN"):
            num = (hydra.get("job") or {}).get("num")
            job = int(num) if isinstance(num, int) else None
    return job, overrides


def _read_summary(summary_path: Path) -> dict[str, Any]:
    """The run's summary, with the config from Hydra's copy when the summary has none."""
    try:
        summary = json.loads(summary_path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        summary = {"status": Status.FAILED.value, "error": f"unreadable {summary_path}: {err}"}
    if not isinstance(summary.get("config"), dict):  # written before the config was known
        saved = read_yaml(RunFolder(summary_path.parent).config_path)
        summary["config"] = saved if isinstance(saved, dict) else None
    return summary


def _one_line(text: Any) -> Any:
    return " ".join(str(text).split()) if isinstance(text, str) else None


def _missing(value: Any) -> bool:
    """None or NaN: a value that is not there."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_run(summary_path: Path, relative_to: Path | None = None) -> dict[str, Any]:
    """One run's row: its summary flattened by ``json_normalize`` (``config.model.name``,
    ``metrics.map_at_r``...), plus job, overrides, run_dir and the private ``_overrides``,
    ``_path``, ``_config`` (the nested config)."""
    run_dir = summary_path.parent
    summary = _read_summary(summary_path)
    # One row; to_dict gives Python values, so that an int stays an int in summary.csv.
    flat = pd.json_normalize(summary).to_dict("records")[0]
    job, overrides = _job_info(run_dir)
    shown_dir = str(run_dir)
    if relative_to is not None and run_dir.is_relative_to(relative_to.resolve()):
        # Inside the summary's folder: relative, so the folder can be moved; else absolute.
        shown_dir = str(run_dir.relative_to(relative_to.resolve())) or "."
    flat.update(
        job=job,
        overrides=" ".join(overrides),
        run_dir=shown_dir,
        _overrides=overrides,
        _path=run_dir,
        _config=summary.get("config"),
        _has_config=isinstance(summary.get("config"), dict),
    )
    return flat


# summary.csv columns kept as text when read back; every other cell is a number if it is one.
_TEXT_COLUMNS = {"overrides", "dataset", "model", "mining", "sampler", "precision", "status"}
_TEXT_COLUMNS |= {"error", "best_metric", "run_dir"}


def _cell(column: str, text: str) -> Any:
    """A summary.csv cell as the run summary had it: None when empty, else an int or a
    float where it parses as one (outside :data:`_TEXT_COLUMNS`), else the text."""
    if text == "":
        return None
    if column in _TEXT_COLUMNS:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# Columns added to summary.csv after its first version: an older file without them is read,
# their values missing (never 0).
_ADDED_LATER = ("precision", "knn_accuracy")


def read_csv_runs(csv_path: Path, relative_to: Path | None = None) -> list[dict[str, Any]]:
    """The runs of a summary.csv that tripletlab-summarize (or a sweep) wrote, as rows like
    :func:`read_run`'s: the columns of the CSV, the config keys they come from
    (``config.mining.strategy``...) and, from the overrides, ``config.<key>`` for each
    ``key=value`` (so ``--baseline mining.memory_size=0`` can pick them).

    The CSV holds no whole config, so a configuration is its overrides (seed aside) within
    this file, as for a run without a config: runs from two files are never pooled. The
    overrides are split at spaces (as the CSV joined them). ``run_dir`` is made relative to
    ``relative_to`` (the new summary's folder). FileNotFoundError (the command's one line)
    when the file cannot be parsed or lacks a column of :data:`CSV_COLUMNS` (but those of
    :data:`_ADDED_LATER`)."""
    try:
        # surrogateescape: bytes that are not UTF-8 (a run folder's name) are kept, as a
        # folder read from disk keeps them, not a UnicodeDecodeError.
        frame = pd.read_csv(
            csv_path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape"
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise FileNotFoundError(f"{csv_path} cannot be read as a summary.csv: {err}") from None
    missing = [c for c in CSV_COLUMNS if c not in frame.columns and c not in _ADDED_LATER]
    if missing:
        raise FileNotFoundError(
            f"{csv_path} is not a summary.csv of tripletlab-summarize (no column {missing[0]})"
        )
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *CSV_COLUMNS])))
    frame = frame.fillna("")  # a column an older summary.csv lacks: missing in every row
    records = []
    for i, raw in enumerate(frame.to_dict("records")):
        row = {column: _cell(column, str(text)) for column, text in raw.items()}
        overrides = (row["overrides"] or "").split()
        for override in overrides:
            key, sep, value = override.partition("=")
            if sep and not key.startswith(("+", "~", "hydra.")):
                row.setdefault(f"config.{key}", _cell(key, value))
        for column, source in _FROM_SUMMARY.items():
            row[source] = row.get(column)
        run_dir = Path(row["run_dir"] or f"row {i}")
        if not run_dir.is_absolute():
            run_dir = csv_path.parent / run_dir
        run_dir = run_dir.resolve()  # as find_summaries resolves the folders it finds
        shown = str(run_dir)
        if relative_to is not None:
            shown = os.path.relpath(run_dir, relative_to.resolve())
        row.update(
            run_dir=shown,
            _overrides=overrides,
            # the folder a configuration is grouped within (see groups._configuration_key)
            _path=csv_path.resolve() / f"row {i}",
            _config=None,
            _has_config=False,
            _csv_batch_size=row["batch_size"],
            _run_dir=run_dir if row["run_dir"] else None,  # the run's folder, for duplicates
        )
        records.append(row)
    return records


def collect_rows(
    paths: Iterable[str | os.PathLike], relative_to: Path | None = None
) -> pd.DataFrame:
    """Every run under ``paths``, one row each with :data:`CSV_COLUMNS` (and the flattened
    summary's columns), sorted by folder, then job number, then run folder. A path that is
    a ``*.csv`` file is a summary.csv whose runs it lists (:func:`read_csv_runs`)."""
    paths = [Path(p) for p in paths]
    tables = list(dict.fromkeys(p.resolve() for p in paths if p.suffix == ".csv" and p.is_file()))
    folders = [p for p in paths if not (p.suffix == ".csv" and p.is_file())]
    records = [read_run(p, relative_to) for p in find_summaries(folders)] if folders else []
    # A run counts once: a CSV row whose run folder was read (or listed by an earlier CSV)
    # is left out, else its seed would be counted twice and its interval narrowed.
    # Compared as summary.csv writes them: a name's bytes that are not UTF-8 as \xNN.
    seen = {escape_name(r["_path"].resolve()) for r in records}
    for table in tables:
        for row in read_csv_runs(table, relative_to):
            run_dir = None if row["_run_dir"] is None else escape_name(row["_run_dir"])
            if run_dir is None or run_dir not in seen:
                records.append(row)
            if run_dir is not None:
                seen.add(run_dir)
    if not records:
        return pd.DataFrame(columns=CSV_COLUMNS)
    # dtype=object: no inference, so a column with a missing value keeps its ints.
    frame = pd.DataFrame(records, dtype=object)
    for column, source in _FROM_SUMMARY.items():
        frame[column] = _column(frame, source)
    frame["batch_size"] = [_batch_size(r) for r in frame.to_dict("records")]
    # What the run used: trainer.mixed_precision=auto is resolved on the machine.
    precision = _column(frame, "precision")
    frame["precision"] = precision.where(
        ~precision.map(_missing), _column(frame, "config.trainer.mixed_precision")
    )
    status = _column(frame, "status")
    frame["status"] = status.where(~status.map(_missing), "unknown")
    frame["error"] = _column(frame, "error").map(_one_line)
    order = pd.DataFrame(
        {
            "folder": frame["_path"].map(lambda p: str(p.parent)),
            "no_job": frame["job"].map(_missing),
            "job": frame["job"].map(lambda j: 0 if _missing(j) else j),
            "run_dir": frame["run_dir"],
        }
    )
    frame = frame.loc[order.sort_values(list(order.columns), kind="stable").index]
    frame = frame.reset_index(drop=True)
    return frame.where(frame.notna(), None)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column of ``frame`` as objects; all None when no run has it."""
    if name in frame:
        return frame[name].astype(object)
    return pd.Series(None, index=frame.index, dtype=object)


def _batch_size(row: Mapping[str, Any]) -> Any:
    if "_csv_batch_size" in row and not _missing(row["_csv_batch_size"]):
        return row["_csv_batch_size"]  # read back from a summary.csv: as it was
    if row.get("config.sampler.name") == "pk":
        p = row.get("config.sampler.classes_per_batch")
        k = row.get("config.sampler.images_per_class")
        if isinstance(p, int) and isinstance(k, int):
            return p * k
    value = row.get("config.trainer.batch_size")
    return None if _missing(value) else value
