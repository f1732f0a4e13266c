"""Compare runs: ``summary.csv``, ``summary.md`` and ``summary.png`` from run or sweep folders.

``tripletlab-summarize PATH... [--out DIR] [--metric NAME]`` finds every
run summary under the given folders (recursively), writes

- ``summary.csv``: one row per run (see :data:`CSV_COLUMNS`), whatever its status;
- ``summary.md``: one row per configuration, sorted by the metric (best first). Runs that
  differ only by their seed are one configuration: its metrics are ``mean ± std`` over the
  runs that finished (``n`` of them); failed runs are counted and listed below the table;
- ``summary.png``: the metric per model and mining strategy, with error bars over seeds,

and prints the table. The sweep callback (:mod:`tripletlab.sweep`) calls :func:`write_summary`
on the sweep folder each time a job ends. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tripletlab.config import METRICS
from tripletlab.io_utils import atomic_write_bytes, atomic_write_csv, atomic_write_text, read_yaml
from tripletlab.run_folder import FINISHED, RunFolder, Status, as_float, find_summaries

log = logging.getLogger("tripletlab")

__all__ = [
    "CSV_COLUMNS",
    "FINISHED",
    "Group",
    "collect_rows",
    "find_summaries",
    "group_rows",
    "main",
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

# Keys that never make two runs different configurations: the seed (that is what we average
# over) and settings that change speed or display, not results.
NOT_CONFIGURATION = ("seed", "trainer.threads", "trainer.progress")

# Metrics shown in the markdown table besides the optimised one (all are in summary.csv).
TABLE_METRICS = ("precision_at_1", "recall_at_4", "map_at_r", "knn_accuracy")


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


def _get(cfg: Mapping | None, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _one_line(text: Any) -> str | None:
    if text is None:
        return None
    return " ".join(str(text).split())


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _batch_size(cfg: Mapping | None) -> Any:
    if _get(cfg, "sampler.name") == "pk":
        p, k = _get(cfg, "sampler.classes_per_batch"), _get(cfg, "sampler.images_per_class")
        if isinstance(p, int) and isinstance(k, int):
            return p * k
    return _get(cfg, "trainer.batch_size")


def read_run(summary_path: Path, relative_to: Path | None = None) -> dict[str, Any]:
    """One summary.csv row (plus private ``_config`` / ``_overrides``) from a run's summary file."""
    run_dir = summary_path.parent
    try:
        summary = json.loads(summary_path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        summary = {"status": Status.FAILED.value, "error": f"unreadable {summary_path}: {err}"}
    cfg = summary.get("config") if isinstance(summary.get("config"), dict) else None
    if cfg is None:  # a summary written before the config was known: use Hydra's copy
        saved = read_yaml(RunFolder(run_dir).config_path)
        cfg = saved if isinstance(saved, dict) else None
    job, overrides = _job_info(run_dir)
    metrics = summary.get("metrics") or {}
    best = summary.get("best") or {}
    shown_dir = str(run_dir)
    if relative_to is not None and run_dir.is_relative_to(relative_to.resolve()):
        # Inside the summary's folder: relative, so the folder can be moved; else absolute.
        shown_dir = str(run_dir.relative_to(relative_to.resolve())) or "."
    row: dict[str, Any] = {
        "job": job,
        "overrides": " ".join(overrides),
        "dataset": _get(cfg, "dataset.name"),
        "model": _get(cfg, "model.name"),
        "mining": _get(cfg, "mining.strategy"),
        "sampler": _get(cfg, "sampler.name"),
        "margin": _get(cfg, "mining.margin"),
        "batch_size": _batch_size(cfg),
        "learning_rate": _get(cfg, "trainer.learning_rate"),
        "epochs": _get(cfg, "trainer.epochs"),
        # what the run used: trainer.mixed_precision=auto is resolved on the machine
        "precision": summary.get("precision") or _get(cfg, "trainer.mixed_precision"),
        "seed": _get(cfg, "seed"),
        "status": summary.get("status") or "unknown",
        "error": _one_line(summary.get("error")),
        **{m: metrics.get(m) for m in METRICS},
        "best_metric": best.get("metric"),
        "best_value": best.get("value"),
        "best_epoch": best.get("epoch"),
        "epochs_done": summary.get("epochs_done"),
        "train_seconds": summary.get("train_seconds"),
        "wall_seconds": summary.get("wall_seconds"),
        "images_per_second": summary.get("images_per_second"),
        "run_dir": shown_dir,
        "_config": cfg,
        "_overrides": overrides,
        "_path": run_dir,
    }
    return row


def collect_rows(
    paths: Iterable[str | os.PathLike], relative_to: Path | None = None
) -> list[dict[str, Any]]:
    """Rows of every run under ``paths``, sorted by folder, then job number, then run folder."""
    rows = [read_run(p, relative_to) for p in find_summaries(paths)]

    def order(row: dict) -> tuple:
        job = row["job"]
        return (
            str(row["_path"].parent),
            job is None,
            job if job is not None else 0,
            row["run_dir"],
        )

    return sorted(rows, key=order)


# ----------------------------------------------------------------------------- grouping
@dataclass
class Group:
    """Runs that differ only by their seed."""

    rows: list[dict[str, Any]]
    label: str = ""  # the overrides that set it apart from the other groups
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def first(self) -> dict[str, Any]:
        return self.rows[0]

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] in FINISHED]

    def mean(self, key: str) -> float:
        return self.stats[key][0] if key in self.stats else math.nan

    def status_text(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        if list(counts) == ["ok"]:
            return "ok"
        return ", ".join(f"{n} {status}" for status, n in counts.items())


def _configuration_key(row: dict[str, Any]) -> str:
    cfg = row["_config"]
    if cfg is not None:
        flat = _flatten(cfg)
        for key in NOT_CONFIGURATION:
            flat.pop(key, None)
        return json.dumps(flat, sort_keys=True, default=str)
    kept = [o for o in row["_overrides"] if _override_key(o) not in NOT_CONFIGURATION]
    return json.dumps({"overrides": sorted(kept), "folder": str(row["_path"].parent)})


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def group_rows(rows: Sequence[dict[str, Any]], metric: str) -> list[Group]:
    """Configurations (runs equal but for the seed), best ``metric`` first, then by label."""
    groups: dict[str, Group] = {}
    for row in rows:
        groups.setdefault(_configuration_key(row), Group(rows=[])).rows.append(row)
    stat_keys = dict.fromkeys([metric, *METRICS, "train_seconds", "images_per_second"])
    for group in groups.values():
        for key in stat_keys:
            group.stats[key] = mean_std([as_float(r.get(key)) for r in group.finished])
    _label_groups(list(groups.values()))

    def order(g: Group) -> tuple:
        value = g.mean(metric)
        return (math.isnan(value), -value if not math.isnan(value) else 0.0, g.label)

    return sorted(groups.values(), key=order)


def _label_groups(groups: list[Group]) -> None:
    """Label each group by its overrides that not every group shares (model and mining, the
    seed and settings that do not change results left out: they have columns or do not count).
    """
    skip = ("model", "mining", *NOT_CONFIGURATION)
    per_group = [[o for o in g.first["_overrides"] if _override_key(o) not in skip] for g in groups]
    common = set.intersection(*(set(o) for o in per_group)) if per_group else set()
    for group, overrides in zip(groups, per_group, strict=True):
        group.label = " ".join(o for o in overrides if o not in common)


# ---------------------------------------------------------------------------- rendering
def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table_metrics(metric: str) -> list[str]:
    return list(dict.fromkeys([metric, *TABLE_METRICS]))


def table_rows(groups: Sequence[Group], metric: str) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the comparison table."""
    with_label = any(g.label for g in groups)
    header = ["rank", "model", "mining"]
    if with_label:
        header.append("setting")
    header += ["n", "status"]
    names = _table_metrics(metric)
    header += [f"{m} (mean ± std)" if i == 0 else m for i, m in enumerate(names)]
    header += ["train s", "img/s"]
    body = []
    for rank, g in enumerate(groups, 1):
        cells = [str(rank), str(g.first["model"] or "?"), str(g.first["mining"] or "?")]
        if with_label:
            cells.append(g.label or "(base)")
        cells += [str(len(g.finished)), g.status_text()]
        cells += [_fmt(*g.stats[m]) for m in names]
        train_mean, _, n = g.stats["train_seconds"]
        speed, _, n_speed = g.stats["images_per_second"]
        cells.append(f"{train_mean:.1f}" if n else "-")
        cells.append(f"{speed:.0f}" if n_speed else "-")
        body.append(cells)
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A markdown table with aligned columns (readable as plain text too)."""

    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    cells = [[esc(c) for c in header], *[[esc(c) for c in row] for row in body]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def _failures(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] not in FINISHED]


def report(rows: Sequence[dict[str, Any]], metric: str, title: str | None = None) -> str:
    """The markdown report: the comparison table, then the runs that did not finish."""
    groups = group_rows(rows, metric)
    header, body = table_rows(groups, metric)
    parts = []
    if title:
        parts.append(f"# {title}")
    seeds = any(len(g.rows) > 1 for g in groups)
    parts.append(
        f"{_plural(len(rows), 'run')}, {_plural(len(groups), 'configuration')}, "
        f"sorted by {metric}"
        + (" (mean ± std over seeds; n: finished runs)" if seeds else "")
        + ".\n"
    )
    parts.append(markdown_table(header, body))
    failed = _failures(rows)
    if failed:
        lines = [f"{_plural(len(failed), 'run')} did not finish:"]
        for r in failed:
            error = r["error"] or "no error recorded"
            if len(error) > 300:
                error = error[:297] + "..."
            lines.append(f"- `{r['run_dir']}` ({r['status']}): {error}")
        parts.append("\n".join(lines))
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def plot_summary(rows: Sequence[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path:
    """A bar per configuration: x = model (and setting), colour = mining strategy; error bars
    are the standard deviation over seeds."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tripletlab.config import STRATEGIES

    groups = group_rows(rows, metric)
    xs = sorted(dict.fromkeys(_x_label(g) for g in groups))
    hues = sorted(
        {_hue(g) for g in groups},
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
        members = [g for g in groups if _hue(g) == hue]
        pos = [_bar_position(g, xs, hues, groups, width) for g in members]
        means = [g.stats[metric][0] if g.stats[metric][2] else 0.0 for g in members]
        # NaN: no error bar (a single run), not a bar of zero height.
        stds = [g.stats[metric][1] if g.stats[metric][2] > 1 else math.nan for g in members]
        ax.bar(
            pos,
            means,
            width * 0.95,
            yerr=stds if any(math.isfinite(v) for v in stds) else None,
            capsize=3,
            color=colors(color_index % 10),
            label=hue,
        )
        for x, mean, std, g in zip(pos, means, stds, members, strict=True):
            n = g.stats[metric][2]
            text = "failed" if n == 0 else f"{mean:.3f}" + (f"\nn={n}" if n > 1 else "")
            ax.annotate(
                text,
                (x, mean + (std if math.isfinite(std) else 0.0)),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            top = max(top, mean + (std if math.isfinite(std) else 0.0))
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, top) * 1.12)
    seeds = any(len(g.finished) > 1 for g in groups)
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


def _bar_position(
    group: Group, xs: list[str], hues: list[str], groups: Sequence[Group], width: float
) -> float:
    """Bars of one x category side by side, centred on its tick whatever hues it lacks."""
    x = _x_label(group)
    present = [h for h in hues if any(_x_label(g) == x and _hue(g) == h for g in groups)]
    return xs.index(x) + (present.index(_hue(group)) - (len(present) - 1) / 2) * width


def _hue(group: Group) -> str:
    return str(group.first["mining"] or "?")


def _x_label(group: Group) -> str:
    model = str(group.first["model"] or "?")
    return f"{model}\n{group.label}" if group.label else model


# ------------------------------------------------------------------------------- writing
def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in CSV_COLUMNS}


def write_summary(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    metric: str,
    title: str | None = None,
    plot: bool = True,
) -> str:
    """Write summary.csv, summary.md and summary.png into ``out_dir``; return the markdown.

    The CSV comes first: it is the contract, and a plot that cannot be drawn never costs it.
    """
    out = Path(out_dir)
    atomic_write_csv(out / CSV_NAME, [_csv_row(r) for r in rows], CSV_COLUMNS)
    text = report(rows, metric, title) if rows else f"No runs yet in {out}.\n"
    atomic_write_text(out / MD_NAME, text)
    if plot and rows:
        try:
            plot_summary(rows, metric, out / PNG_NAME)
        except Exception as err:  # noqa: BLE001 (the table is what matters)
            log.warning("could not draw %s: %s", out / PNG_NAME, err)
    return text


def default_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The runs' optimised metric (the most common), else precision_at_1."""
    counts: dict[str, int] = {}
    for r in rows:
        m = _get(r["_config"], "optimized_metric") or r.get("best_metric")
        if m in METRICS:
            counts[m] = counts.get(m, 0) + 1
    return max(counts, key=counts.get) if counts else "precision_at_1"  # type: ignore[arg-type]


if __name__ == "__main__":  # `python -m tripletlab.summarize`: tripletlab-summarize's old name
    from tripletlab.cli.summarize import main

    sys.exit(main())
