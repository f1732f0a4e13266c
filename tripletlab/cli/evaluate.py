"""``tripletlab-evaluate RUN_DIR [key=value ...] [--split train] [--name NAME]``.

Recomputes a trained run's metrics with its saved model (:func:`tripletlab.reuse.evaluate.evaluate_run`),
prints them next to the run's own and writes ``RUN_DIR/eval/<name>.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from tripletlab.cli.common import add_overrides, format_table, overrides_of, run_cli
from tripletlab.inference import SPLITS
from tripletlab.reuse.evaluate import evaluate_run


def format_result(result: dict) -> str:
    """The title line, the metrics table (with training's values when comparable), the file."""
    metrics, training = result["metrics"], result.get("training_metrics")
    header = ["metric", "value"] + (["at training"] if training else [])
    rows = []
    for key, value in metrics.items():
        row = [key, value]
        if training:
            t = training.get(key)
            row.append(math.nan if t is None else float(t))
        rows.append(row)
    ds = result["dataset"]
    title = (
        f"{result['run_dir']}: {ds['name']} {result['split']} split, {ds['queries']} queries"
        + (f", k-NN gallery {ds['knn_gallery']} train images" if ds["knn_gallery"] else "")
        + (f" ({' '.join(result['overrides'])})" if result["overrides"] else "")
    )
    return f"{title}\n{format_table(rows, header)}\nwrote {result['path']}"


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-evaluate",
        description="Recompute a trained run's metrics with its saved model, from its folder.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (a training's output)")
    add_overrides(parser, "dataset.max_test=500, or dataset=image_folder dataset.root=/my/images")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    parser.add_argument(
        "--name", help="file name (without .json) in RUN_DIR/eval/; default from the data"
    )
    args = parser.parse_intermixed_args(argv)
    result = evaluate_run(args.run_dir, overrides_of(args), args.split, args.name)
    print(format_result(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
