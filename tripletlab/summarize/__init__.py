"""Compare runs: ``summary.csv``, ``summary.md`` and ``summary.png`` from run or sweep folders.

``tripletlab-summarize PATH... [--out DIR] [--metric NAME]`` finds every
run summary under the given folders (recursively), writes

- ``summary.csv``: one row per run (see :data:`CSV_COLUMNS`), whatever its status;
- ``summary.md``: one row per configuration, sorted by the metric (best first). Runs that
  differ only by their seed are one configuration: its metrics are ``mean ± std`` over the
  runs that finished (``n`` of them); failed runs are counted and listed below the table;
- ``summary.png``: the metric per model and mining strategy, with error bars over seeds,

and prints the table. The sweep callback (:mod:`tripletlab.sweep`) calls :func:`write_summary`
on the sweep folder each time a job ends.

The tables are pandas frames: :func:`collect_rows` reads each run's summary with
``pandas.json_normalize`` (one row per run), :func:`group_rows` groups the seeds with
``groupby().agg`` and the markdown is ``DataFrame.to_markdown``. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tripletlab.config import METRICS, override_key
from tripletlab.io_utils import atomic_write_bytes, atomic_write_text, read_yaml
from tripletlab.run_folder import FINISHED, RunFolder, Status, find_summaries

log = logging.getLogger("tripletlab")

__all__ = [
    "CSV_COLUMNS",
    "FINISHED",
    "collect_rows",
    "find_summaries",
    "group_rows",
    "markdown_table",
    "write_summary",
]

CSV_NAME, MD_NAME, PNG_NAME = "summary.csv", "summary.md", "summary.png"

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

# Keys that never make two runs different configurations: the seed (that is what we average
# over) and settings that change speed or display, not results.
NOT_CONFIGURATION = ("seed", "trainer.threads", "trainer.progress")

# Metrics shown in the markdown table besides the optimised one (all are in summary.csv).
TABLE_METRICS = ("precision_at_1", "recall_at_4", "map_at_r", "knn_accuracy")

# Averaged over the finished runs of a configuration, besides the metrics.
TIMING = ("train_seconds", "images_per_second")


# ------------------------------------------------------------------------------ reading
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


def collect_rows(
    paths: Iterable[str | os.PathLike], relative_to: Path | None = None
) -> pd.DataFrame:
    """Every run under ``paths``, one row each with :data:`CSV_COLUMNS` (and the flattened
    summary's columns), sorted by folder, then job number, then run folder."""
    records = [read_run(p, relative_to) for p in find_summaries(paths)]
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
    if row.get("config.sampler.name") == "pk":
        p = row.get("config.sampler.classes_per_batch")
        k = row.get("config.sampler.images_per_class")
        if isinstance(p, int) and isinstance(k, int):
            return p * k
    value = row.get("config.trainer.batch_size")
    return None if _missing(value) else value


# ----------------------------------------------------------------------------- grouping
def _configuration_key(row: Mapping[str, Any]) -> str:
    """What makes a configuration: the flattened config but for :data:`NOT_CONFIGURATION`
    (without a config: the overrides and the folder)."""
    if row["_has_config"]:
        skip = {f"config.{k}" for k in NOT_CONFIGURATION}
        flat = {
            k: v
            for k, v in row.items()
            if k.startswith("config.") and k not in skip and not _missing(v)
        }
        return json.dumps(flat, sort_keys=True, default=str)
    kept = [o for o in row["_overrides"] if override_key(o).lstrip("~") not in NOT_CONFIGURATION]
    return json.dumps({"overrides": sorted(kept), "folder": str(row["_path"].parent)})


def _status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts(sort=False)
    if list(counts.index) == [Status.OK.value]:
        return "ok"
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _labels(firsts: Sequence[list[str]]) -> list[str]:
    """Each group's overrides that not every group shares (model and mining, the seed and
    settings that do not change results left out: they have columns or do not count)."""
    skip = ("model", "mining", *NOT_CONFIGURATION)
    per_group = [
        [o for o in overrides if override_key(o).lstrip("~") not in skip] for overrides in firsts
    ]
    common = set.intersection(*(set(o) for o in per_group)) if per_group else set()
    return [" ".join(o for o in overrides if o not in common) for overrides in per_group]


def group_rows(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration (runs equal but for the seed), best ``metric`` first.

    Columns: model, mining, label (the overrides that set it apart), runs, n (finished
    runs), status ("ok" or "3 ok, 1 failed"), and for the metrics and :data:`TIMING`
    ``<key>.mean``, ``<key>.std`` (sample std; 0 for one run) and ``<key>.n`` over the
    finished runs.
    """
    frame = rows.assign(_key=[_configuration_key(r) for r in rows.to_dict("records")])
    keys = list(dict.fromkeys([metric, *METRICS, *TIMING]))
    by = frame.groupby("_key", sort=False)
    groups = by.agg(
        model=("model", "first"),
        mining=("mining", "first"),
        runs=("status", "size"),
        status=("status", _status_text),
        _overrides=("_overrides", "first"),
    )
    finished = frame[frame["status"].isin(FINISHED)]
    values = finished[keys].apply(pd.to_numeric, errors="coerce")
    values["_key"] = finished["_key"]
    stats = values.groupby("_key", sort=False)[keys].agg(["mean", "std", "count"])
    stats.columns = [f"{k}.{'n' if s == 'count' else s}" for k, s in stats.columns]
    groups = groups.join(stats)
    for k in keys:
        groups[f"{k}.n"] = groups[f"{k}.n"].fillna(0).astype(int)
        one = groups[f"{k}.n"] == 1
        groups.loc[one, f"{k}.std"] = 0.0
    groups["n"] = finished.groupby("_key", sort=False).size()
    groups["n"] = groups["n"].reindex(groups.index).fillna(0).astype(int)
    groups["label"] = _labels(list(groups["_overrides"]))
    groups = groups.sort_values(
        [f"{metric}.mean", "label"], ascending=[False, True], na_position="last", kind="stable"
    )
    return groups.reset_index(drop=True)


# ---------------------------------------------------------------------------- rendering
def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table_metrics(metric: str) -> list[str]:
    return list(dict.fromkeys([metric, *TABLE_METRICS]))


def comparison_table(groups: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The markdown table's cells (strings), one row per configuration."""
    table = pd.DataFrame(
        {
            "rank": [str(i) for i in range(1, len(groups) + 1)],
            "model": groups["model"].map(lambda v: "?" if _missing(v) else str(v)),
            "mining": groups["mining"].map(lambda v: "?" if _missing(v) else str(v)),
        }
    )
    if groups["label"].astype(bool).any():
        table["setting"] = groups["label"].map(lambda v: v or "(base)")
    table["n"] = groups["n"].astype(str)
    table["status"] = groups["status"]
    for i, m in enumerate(_table_metrics(metric)):
        cells = [
            _fmt(mean, std, n)
            for mean, std, n in zip(
                groups[f"{m}.mean"], groups[f"{m}.std"], groups[f"{m}.n"], strict=True
            )
        ]
        table[f"{m} (mean ± std)" if i == 0 else m] = cells
    table["train s"] = [
        f"{v:.1f}" if n else "-"
        for v, n in zip(groups["train_seconds.mean"], groups["train_seconds.n"], strict=True)
    ]
    table["img/s"] = [
        f"{v:.0f}" if n else "-"
        for v, n in zip(
            groups["images_per_second.mean"], groups["images_per_second.n"], strict=True
        )
    ]
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """A frame of strings as a markdown table with aligned columns (readable as text too)."""
    escaped = table.map(lambda c: str(c).replace("|", "\\|"))
    escaped.columns = [str(c).replace("|", "\\|") for c in table.columns]
    # disable_numparse: cells are already formatted ("0.8500 ± 0.0557", "1").
    return escaped.to_markdown(index=False, disable_numparse=True) + "\n"


def _failures(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[~rows["status"].isin(FINISHED)]


def report(rows: pd.DataFrame, metric: str, title: str | None = None) -> str:
    """The markdown report: the comparison table, then the runs that did not finish."""
    groups = group_rows(rows, metric)
    parts = []
    if title:
        parts.append(f"# {title}")
    seeds = bool((groups["runs"] > 1).any())
    parts.append(
        f"{_plural(len(rows), 'run')}, {_plural(len(groups), 'configuration')}, "
        f"sorted by {metric}"
        + (" (mean ± std over seeds; n: finished runs)" if seeds else "")
        + ".\n"
    )
    parts.append(markdown_table(comparison_table(groups, metric)))
    failed = _failures(rows)
    if len(failed):
        lines = [f"{_plural(len(failed), 'run')} did not finish:"]
        for r in failed.to_dict("records"):
            error = r["error"] or "no error recorded"
            if len(error) > 300:
                error = error[:297] + "..."
            lines.append(f"- `{r['run_dir']}` ({r['status']}): {error}")
        parts.append("\n".join(lines))
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def plot_summary(rows: pd.DataFrame, metric: str, path: str | os.PathLike) -> Path:
    """A bar per configuration: x = model (and setting), colour = mining strategy; error bars
    are the standard deviation over seeds."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tripletlab.config import STRATEGIES

    groups = group_rows(rows, metric)
    groups["x"] = [
        f"{'?' if _missing(m) else m}\n{label}" if label else ("?" if _missing(m) else str(m))
        for m, label in zip(groups["model"], groups["label"], strict=True)
    ]
    groups["hue"] = groups["mining"].map(lambda v: "?" if _missing(v) else str(v))
    xs = sorted(dict.fromkeys(groups["x"]))
    hues = sorted(
        set(groups["hue"]),
        key=lambda h: (h not in STRATEGIES, STRATEGIES.index(h) if h in STRATEGIES else 0, h),
    )
    colors = colormaps["tab10"]
    width = 0.8 / max(len(hues), 1)
    fig = Figure(figsize=(max(6.0, 2.0 + 0.7 * len(xs) * len(hues)), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = 0.0
    for j, hue in enumerate(hues):
        color_index = STRATEGIES.index(hue) if hue in STRATEGIES else len(STRATEGIES) + j
        members = groups[groups["hue"] == hue]
        pos = []
        for x in members["x"]:
            # Bars of one x category side by side, centred on its tick whatever hues it lacks.
            present = [h for h in hues if ((groups["x"] == x) & (groups["hue"] == h)).any()]
            pos.append(xs.index(x) + (present.index(hue) - (len(present) - 1) / 2) * width)
        ns = list(members[f"{metric}.n"])
        means = [m if n else 0.0 for m, n in zip(members[f"{metric}.mean"], ns, strict=True)]
        # NaN: no error bar (a single run), not a bar of zero height.
        stds = [s if n > 1 else math.nan for s, n in zip(members[f"{metric}.std"], ns, strict=True)]
        ax.bar(
            pos,
            means,
            width * 0.95,
            yerr=stds if any(math.isfinite(v) for v in stds) else None,
            capsize=3,
            color=colors(color_index % 10),
            label=hue,
        )
        for x, mean, std, n in zip(pos, means, stds, ns, strict=True):
            text = "failed" if n == 0 else f"{mean:.3f}" + (f"\nn={n}" if n > 1 else "")
            height = mean + (std if math.isfinite(std) else 0.0)
            ax.annotate(
                text,
                (x, height),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            top = max(top, height)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, top) * 1.12)
    seeds = bool((groups["n"] > 1).any())
    ax.set_title(
        f"{metric} per model and mining strategy" + (" (mean ± std over seeds)" if seeds else ""),
        fontsize=10,
    )
    ax.legend(title="mining", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------- writing
def write_summary(
    rows: pd.DataFrame,
    out_dir: str | os.PathLike,
    metric: str,
    title: str | None = None,
    plot: bool = True,
) -> str:
    """Write summary.csv, summary.md and summary.png into ``out_dir``; return the markdown.

    The CSV comes first: it is the contract, and a plot that cannot be drawn never costs it.
    """
    out = Path(out_dir)
    csv_text = rows.reindex(columns=CSV_COLUMNS).to_csv(index=False, lineterminator="\n")
    atomic_write_text(out / CSV_NAME, csv_text)
    text = report(rows, metric, title) if len(rows) else f"No runs yet in {out}.\n"
    atomic_write_text(out / MD_NAME, text)
    if plot and len(rows):
        try:
            plot_summary(rows, metric, out / PNG_NAME)
        except Exception as err:  # noqa: BLE001 (the table is what matters)
            log.warning("could not draw %s: %s", out / PNG_NAME, err)
    return text


def default_metric(rows: pd.DataFrame) -> str:
    """The runs' optimised metric (the most common), else precision_at_1."""
    if not len(rows):
        return "precision_at_1"
    named = _column(rows, "config.optimized_metric")
    named = named.where(~named.map(_missing), rows["best_metric"])
    counts = named[named.isin(METRICS)].value_counts(sort=False)
    return str(counts.idxmax()) if len(counts) else "precision_at_1"
