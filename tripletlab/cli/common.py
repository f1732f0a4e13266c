"""What the commands share: error reporting, override arguments, plain text tables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tripletlab.errors import TripletLabError
from tripletlab.io_utils import ESCAPE_ERRORS
from tripletlab.reporting import report_errors

log = logging.getLogger("tripletlab")


class UsageError(TripletLabError):
    """The command line itself is wrong (a missing folder, a bad option value): exit 2."""

    exit_code = 2


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``: a TripletLabError becomes one ``error: ...`` line and exit 1
    (2 for a :class:`UsageError`); Ctrl-C exits 130. Anything else is a bug: traceback.
    What it prints and logs is redacted (:func:`tripletlab.credentials.redacted_output`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A file name that is not UTF-8 prints escaped (\xNN), whatever the locale, never a
    # UnicodeEncodeError (tripletlab.io_utils.ESCAPE_ERRORS).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors=ESCAPE_ERRORS)

    def setup_logging() -> None:
        # Our messages at INFO; other libraries' (absl, TensorFlow) only from WARNING up.
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
        log.setLevel(logging.INFO)

    return report_errors(main, argv, setup=setup_logging)


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """Positional ``key=value`` overrides, and ``--override KEY=VALUE`` as an alias."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"changes to the run's config, Hydra style, e.g. {example}",
    )
    parser.add_argument(
        "--override",
        dest="more_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the same as a positional KEY=VALUE (repeatable)",
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The positional overrides, then those given with ``--override``."""
    return [*getattr(args, "overrides", []), *args.more_overrides]


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table (a pandas frame in tabulate's "simple" layout): floats with 4
    decimals, a missing value (None, NaN) as ``-``, columns aligned."""
    import pandas as pd

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return "-" if v is None else str(v)

    frame = pd.DataFrame([[cell(v) for v in row] for row in rows], columns=list(header))
    text = frame.to_markdown(index=False, tablefmt="simple", disable_numparse=True)
    return "\n".join(line.rstrip() for line in text.splitlines())
