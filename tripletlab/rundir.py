"""TEMPORARY: the command-line helpers left from the old rundir module (moving to cli/).

The rest moved: the folder to :mod:`tripletlab.run_folder`, config reuse to
:mod:`tripletlab.reuse`, the model and embedding to :mod:`tripletlab.inference`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tripletlab.errors import TripletLabError

log = logging.getLogger("tripletlab")


# --------------------------------------------------------------------------- command lines


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a tool's ``main``: a TripletLabError becomes one ``error: ...`` line and exit 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Our messages at INFO; other libraries' (absl, TensorFlow) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        return main(argv)
    except TripletLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table; floats with 4 decimals, columns aligned."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return "-" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
