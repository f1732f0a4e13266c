"""``tripletlab-fetch NAME [--root DIR] [--no-download] [--url URL] [--allow-insecure-url]``.

Makes sure a dataset's files are present (:func:`tripletlab.data.fetch`): found where
``dataset.root`` / ``$TRIPLETLAB_DATA`` / the system and Keras folders hold them, else
downloaded; corrupt files are an error. ``python -m tripletlab.data fetch NAME`` is the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tripletlab.cli.common import run_cli
from tripletlab.credentials import refuse_secrets
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
    # A URL with a credential is refused like dataset.url: it would be printed and logged.
    refuse_secrets([("--url", args.url)])
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
