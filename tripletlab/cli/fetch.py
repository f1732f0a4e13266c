"""``tripletlab-fetch NAME [--root DIR] [--no-download] [--url URL] [--allow-insecure-url]``.

Makes sure a dataset's files are present (:func:`tripletlab.data.fetch`): found where
``dataset.root`` / ``$TRIPLETLAB_DATA`` / the system and Keras folders hold them, else
downloaded; corrupt files are an error. ``python -m tripletlab.data fetch NAME`` is the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tripletlab.cli.common import run_cli
from tripletlab.data import DATASET_NAMES, fetch


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Make sure a dataset's files are present (download if needed)."
    )
    parser.add_argument(
        "name", choices=DATASET_NAMES, metavar="NAME", help=", ".join(DATASET_NAMES)
    )
    parser.add_argument("--root", help="folder holding the files (then only it is used)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    parser.add_argument("--url", help="mirror to download from (default: the official one)")
    parser.add_argument(
        "--allow-insecure-url",
        action="store_true",
        help="allow an http:// or file:// --url (no TLS: what it serves can be replaced)",
    )
    return parser


def _fetch(argv: Sequence[str] | None, prog: str = "tripletlab-fetch") -> int:
    args = _parser(prog).parse_args(argv)
    folder, how = fetch(
        args.name,
        args.root,
        download=not args.no_download,
        url=args.url,
        allow_insecure_url=args.allow_insecure_url,
    )
    print(f"{args.name}: {how} {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_fetch, argv)


def data_module_main(argv: Sequence[str] | None = None) -> int:
    """``python -m tripletlab.data fetch NAME ...``: the same command under its older name."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "fetch":
        usage = (
            "usage: python -m tripletlab.data fetch NAME [--root DIR] [--no-download] [--url URL] "
            "[--allow-insecure-url]"
        )
        help_asked = bool(args) and args[0] in ("-h", "--help")
        print(usage, file=sys.stdout if help_asked else sys.stderr)
        return 0 if help_asked else 2
    return run_cli(lambda rest: _fetch(rest, "python -m tripletlab.data fetch"), args[1:])


if __name__ == "__main__":
    sys.exit(main())
