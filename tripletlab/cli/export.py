"""``tripletlab-export RUN_DIR [--format saved_model|onnx] [--out DIR] [key=value ...]``.

Exports a run's embedding model for TensorFlow alone (SavedModel) or ONNX runtimes
(:func:`tripletlab.reuse.export.export_run`); by default into the run folder's ``export/``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tripletlab.cli.common import add_overrides, overrides_of, run_cli
from tripletlab.reuse.export import FORMATS, export_run


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="tripletlab-export",
        description="Export a trained run's embedding model: a SavedModel that TensorFlow "
        "loads alone (preprocessing inside), or an ONNX model (the onnx extra).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (a training's output)")
    # No argparse choices: an unknown format gets the one-line message the library gives.
    parser.add_argument(
        "--format",
        default="saved_model",
        metavar="|".join(FORMATS),
        help="saved_model (default) or onnx",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    add_overrides(parser, "trainer.threads=2")
    args = parser.parse_intermixed_args(argv)
    result = export_run(args.run_dir, args.format, args.out, overrides_of(args))
    h, w, c = result["image_shape"]
    print(
        f"wrote {result['path']}: {result['format']}, float32 embeddings of dimension "
        f"{result['embedding_size']}"
        + (", L2-normalised" if result["l2_normalized"] else "")
        + f" (the model sees {h}x{w}x{c} images)"
    )
    for name, signature in result["signatures"].items():
        print(f"  {name}: {signature}")
    if "onnx_max_abs_difference" in result:
        print(
            f"  checked with onnxruntime: max abs difference {result['onnx_max_abs_difference']:.2g}"
            " to TensorFlow"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
