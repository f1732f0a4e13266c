"""``tripletlab-summarize PATH... [--out DIR] [--metric NAME] [--baseline KEY=VALUE,...]
[--no-plot]``: the command, here so that ``python -m tripletlab.summarize`` needs nothing
from :mod:`tripletlab.cli` (which wraps :func:`run` with its error reporting).

Finds every run under the given run or sweep folders (recursively), or listed in a
summary.csv written earlier, writes the summary
files (:func:`tripletlab.summarize.write_summary`) and prints the table. Exit status: 0, 1
when no run was found or ``--baseline`` matches no single configuration, 2 when a PATH does
not exist.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from tripletlab import summarize
from tripletlab.config import METRICS
from tripletlab.errors import TripletLabError
from tripletlab.reporting import report_errors
from tripletlab.run_folder import SUMMARY_FILE


class PathError(TripletLabError):
    """A PATH on the command line does not exist: exit 2, as for a usage error."""

    exit_code = 2


def default_out(paths: Sequence[str]) -> Path:
    """The deepest folder that holds every PATH (a file's folder for a file)."""
    dirs = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths]
    return Path(os.path.commonpath([str(d) for d in dirs]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tripletlab-summarize",
        description="Compare runs: write summary.csv, summary.md, summary_stats.csv and "
        "summary.png from the runs found (recursively) in run or sweep folders, and print "
        "the table (mean, sample std, Student-t 95% interval, and each configuration "
        "against the best or --baseline: paired or Welch t-test, Holm-adjusted).",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="run or sweep folders, or summary.csv files written earlier (their runs)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the files (default: the folder that holds all PATHs)",
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        help="the metric to sort, compare and plot by (default: the runs' optimized_metric)",
    )
    p.add_argument(
        "--baseline",
        metavar="KEY=VALUE,...",
        help="compare every configuration with the one these run-config values pick "
        "(e.g. mining=batch_hard,mining.memory_size=0); default: the best",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write summary.png")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """The command; raises TripletLabError (PathError: exit 2) for the user's mistakes."""
    args = parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.paths)
    try:
        rows = summarize.collect_rows(args.paths, relative_to=out)
    except FileNotFoundError as err:
        raise PathError(str(err)) from None
    if rows.empty:
        raise TripletLabError(f"no {SUMMARY_FILE} under {' '.join(args.paths)}")
    metric = args.metric or summarize.default_metric(rows)
    text = summarize.write_summary(rows, out, metric, plot=not args.no_plot, baseline=args.baseline)
    print(text, end="")
    written = [summarize.CSV_NAME, summarize.MD_NAME, summarize.STATS_NAME]
    written += [] if args.no_plot else [summarize.PNG_NAME]
    print(f"wrote {', '.join(str(out / n) for n in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`run` as the commands run (:func:`tripletlab.cli.common.run_cli`): a user's
    mistake is one ``error: ...`` line (no traceback), and the output is redacted."""
    return report_errors(run, argv)
