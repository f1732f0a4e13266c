"""Compare runs: ``summary.csv``, ``summary.md``, ``summary_stats.csv`` and ``summary.png``.

``tripletlab-summarize PATH... [--out DIR] [--metric NAME] [--baseline KEY=VALUE,...]``
(:mod:`tripletlab.summarize.command`) finds every run summary under the given folders
(recursively) and writes

- ``summary.csv``: one row per run (see :data:`CSV_COLUMNS`), whatever its status;
- ``summary.md``: one row per configuration, sorted by the metric (best first). Runs that
  differ only by their seed are one configuration (a seed that ran twice counts once): n,
  mean ± sample std, the Student-t 95% interval of the mean, and the difference with the
  best configuration (or the baseline): its 95% interval, a Holm-adjusted p-value (paired
  by seed, else Welch) and a verdict in words. Failed runs are counted and listed below the table;
- ``summary_stats.csv``: the same statistics for every metric (see :data:`STATS_COLUMNS`);
- ``summary.png``: each configuration's mean and 95% interval (:func:`tripletlab.plots.
  plot_comparison`),

and prints the table. The sweep callback (:mod:`tripletlab.sweep`) calls :func:`write_summary`
on the sweep folder each time a job ends.

The parts: :mod:`.rows` reads the runs (pandas), :mod:`.groups` groups the seeds and
compares configurations, :mod:`.stats` holds the statistics (numpy, scipy), :mod:`.report`
renders them. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from tripletlab.config import METRICS
from tripletlab.io_utils import atomic_write_text
from tripletlab.run_folder import FINISHED, find_summaries
from tripletlab.summarize.groups import compare_groups, find_baseline, group_rows
from tripletlab.summarize.rows import CSV_COLUMNS, _column, _missing, collect_rows
from tripletlab.summarize.tables import STATS_COLUMNS, comparison_table, markdown_table, report
from tripletlab.summarize.tables import stats_frame as _stats_frame

log = logging.getLogger("tripletlab")

__all__ = [
    "CSV_COLUMNS",
    "FINISHED",
    "METRICS",
    "STATS_COLUMNS",
    "collect_rows",
    "compare_groups",
    "comparison_table",
    "default_metric",
    "find_summaries",
    "group_rows",
    "markdown_table",
    "write_summary",
]

CSV_NAME, MD_NAME, STATS_NAME, PNG_NAME = (
    "summary.csv",
    "summary.md",
    "summary_stats.csv",
    "summary.png",
)


def write_summary(
    rows: pd.DataFrame,
    out_dir: str | os.PathLike,
    metric: str,
    title: str | None = None,
    plot: bool = True,
    baseline: str | None = None,
) -> str:
    """Write summary.csv, summary.md, summary_stats.csv and summary.png into ``out_dir``;
    return the markdown. ``baseline``: ``KEY=VALUE,...`` naming the configuration the
    others are compared with (default: the best); TripletLabError when it names none or
    several.

    The CSV comes first: it is the contract, and a plot that cannot be drawn never costs it.
    """
    out = Path(out_dir)
    csv_text = rows.reindex(columns=CSV_COLUMNS).to_csv(index=False, lineterminator="\n")
    atomic_write_text(out / CSV_NAME, csv_text)
    if not len(rows):
        text = f"No runs yet in {out}.\n"
        atomic_write_text(out / MD_NAME, text)
        return text
    groups = group_rows(rows, metric)
    reference = 0 if baseline is None else find_baseline(groups, baseline)
    ref_name = "best" if baseline is None else "baseline"
    text = report(rows, metric, title, groups, reference, ref_name)
    atomic_write_text(out / MD_NAME, text)
    table = _stats_frame(groups, reference)
    atomic_write_text(out / STATS_NAME, table.to_csv(index=False, lineterminator="\n"))
    if plot:
        try:
            from tripletlab.plots import plot_comparison

            plot_comparison(groups, metric, out / PNG_NAME, reference, ref_name)
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
