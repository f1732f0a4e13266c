"""``tripletlab-summarize PATH... [--out DIR] [--metric NAME] [--no-plot]``.

Finds every run under the given run or sweep folders (recursively), writes summary.csv,
summary.md and summary.png (:mod:`tripletlab.summarize`) and prints the table. Exit status:
0, 1 when no run was found, 2 when a PATH does not exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tripletlab import summarize
from tripletlab.cli.common import UsageError, run_cli
from tripletlab.config import METRICS
from tripletlab.errors import TripletLabError
from tripletlab.run_folder import SUMMARY_FILE


def default_out(paths: Sequence[str]) -> Path:
    """The deepest folder that holds every PATH (a file's folder for a file)."""
    dirs = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths]
    return Path(os.path.commonpath([str(d) for d in dirs]))


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-summarize",
        description="Compare runs: write summary.csv, summary.md and summary.png from the runs "
        "found (recursively) in run or sweep folders, and print the table.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep folders")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the files (default: the folder that holds all PATHs)",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        help="the metric to sort and plot by (default: the runs' optimized_metric)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write summary.png")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.paths)
    try:
        rows = summarize.collect_rows(args.paths, relative_to=out)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    if rows.empty:
        raise TripletLabError(f"no {SUMMARY_FILE} under {' '.join(args.paths)}")
    metric = args.metric or summarize.default_metric(rows)
    text = summarize.write_summary(rows, out, metric, plot=not args.no_plot)
    print(text, end="")
    written = [summarize.CSV_NAME, summarize.MD_NAME]
    written += [] if args.no_plot else [summarize.PNG_NAME]
    print(f"wrote {', '.join(str(out / n) for n in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
