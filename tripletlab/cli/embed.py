"""``tripletlab-embed RUN_DIR INPUT... --out FILE [--neighbours K [--gallery DIR]] [key=value ...]``.

Embeds image files and folders with a run's model (:func:`tripletlab.reuse.embed.embed_inputs`)
and optionally lists each input's nearest images. Among the arguments after RUN_DIR, a
``key=value`` that is not an existing path is an override; everything else is an input.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tripletlab.cli.common import format_table, run_cli
from tripletlab.reuse.embed import MAX_PRINTED_QUERIES, embed_inputs

# Hydra's override syntax: an optional + / ++ / ~, a dotted key (or group), '='. No '/':
# a path such as photos/a=b.png is an input.
_OVERRIDE = re.compile(r"^(\+\+|\+|~)?[A-Za-z_][\w.@-]*=")


def is_override(arg: str) -> bool:
    """``dataset.root=/x`` is an override; a file that exists is an input, whatever its name."""
    return bool(_OVERRIDE.match(arg)) and not Path(arg).expanduser().exists()


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-embed",
        description="Embed images with a trained run's model; optionally list their neighbours.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (a training's output)")
    parser.add_argument(
        "items",
        nargs="+",
        metavar="INPUT|KEY=VALUE",
        help="image files or folders (recursively), and changes to the run's config "
        "(Hydra style, e.g. dataset.root=/moved/data)",
    )
    parser.add_argument(
        "--out", required=True, help="output file: .npy (embeddings) or .tsv (paths and values)"
    )
    parser.add_argument(
        "--neighbours",
        "--neighbors",
        type=int,
        default=0,
        metavar="K",
        help="also list each input's K nearest images (table, TSV and contact sheet PNG)",
    )
    parser.add_argument(
        "--gallery",
        metavar="DIR",
        help="search this folder of images (labels from their sub-folders) instead of the "
        "training split of the run's dataset",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the same as a KEY=VALUE argument (repeatable)",
    )
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.items if is_override(a)] + args.override
    inputs = [a for a in args.items if not is_override(a)]
    result = embed_inputs(args.run_dir, inputs, args.out, args.neighbours, args.gallery, overrides)
    print(
        f"wrote {result['count']} embeddings of dimension {result['dim']} "
        f"(images as {'x'.join(map(str, result['image_shape']))}) to {result['out']}"
    )
    if args.neighbours:
        queries = len(result["names"])
        printed = set(result["names"][:MAX_PRINTED_QUERIES])
        shown = [r for r in result["table"] if r[0] in printed]
        print(f"nearest images in {result['gallery']} ({result['gallery_size']} images):")
        print(format_table(shown, result["header"]))
        if queries > MAX_PRINTED_QUERIES:
            print(f"... {queries - MAX_PRINTED_QUERIES} more inputs in {result['neighbours_path']}")
        print(f"wrote {result['neighbours_path']} and {result['sheet_path']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
