"""``tripletlab-summarize PATH... [--out DIR] [--metric NAME] [--baseline KEY=VALUE,...]
[--no-plot]``: :mod:`tripletlab.summarize.command` with the commands' error reporting.

Exit status: 0, 1 when no run was found, 2 when a PATH does not exist.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tripletlab.cli.common import run_cli
from tripletlab.summarize.command import run


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
