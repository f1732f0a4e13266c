"""Benchmark of the triplet losses: ``python -m tripletlab.bench losses``.

For each batch size B and strategy it times one forward + backward pass (the gradient w.r.t.
the embeddings) inside a ``tf.function`` and measures its peak memory, for
:mod:`tripletlab.losses` ("ours") and, for batch-all and semi-hard, the textbook dense forms
("dense"): the [B, B, B] triplet tensor of omoindrot/tensorflow-triplet-loss for batch-all
and the [B*B, B] tiling of tf-addons' ``triplet_semihard_loss`` for semi-hard, re-implemented
in :mod:`tripletlab.bench.dense` op for op (tf-addons is not installed) but counting exactly the triplets ours count, so
the losses agree up to rounding (checked: a mismatch is flagged in the note). Everything runs
in one process, so the ratios compare like with like.

Figures:
* ms: median wall time of ``repeats`` calls after ``warmup`` calls (the first one traces).
* peak MB: the allocator's peak bytes during one more call, minus the bytes allocated before
  it (``tf.config.experimental.get_memory_info``): the tensors the step creates. On CPU this
  counts the TF CPU allocator, not memory that kernels take from malloc directly.

Labels (``--labels``, default ``pk,random10,random100``, one table section each):

* ``pk``: PK batches, K images per class (``--images-per-class``, default 4) and B / K
  classes (16 classes at B = 64, the project's PK default), shuffled.
* ``random<N>``: each label drawn uniformly from N classes, as a random sampler over a
  dataset of N classes gives: about B / N images per class, so each anchor has many
  positives (the mining's hard case: 10 classes at B = 4096 is ~410 positives per anchor).

Embeddings (``--embeddings``) are L2-normalised like the model's output (D = ``--dim``,
default 64): ``random`` (default) normal, as from an untrained model, or ``clustered``, a
centre per class plus noise. With large classes the time of batch-all and semi-hard depends
on them: their search's branches mispredict when distances interleave with the anchor's
positives' thresholds. Random: semi-hard's worst case (positives and negatives at the same
distances), batch-all's best (d + margin is above most negatives); clustered: the reverse.

Dense cases are skipped when ``12 * B^3`` bytes (three live float32 [B, B, B] tensors in the
forward + backward pass) exceeds ``--dense-cap-gb``.

Times are taken with the process's allocator: TensorFlow's default CPU allocator, as in
training. That allocator keeps no statistics, so on CPU the peak memory is measured in a
second process (same cases, one call each) with the BFC allocator,
``TF_CPU_ALLOCATOR_USE_BFC=true`` (``--memory off``: no second process, peak MB "-"). BFC
reuses freed blocks, which makes the elementwise passes faster: timed under it, batch-hard
gains more than the others, and the ratios to it grow by ~0.2-0.5.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from tripletlab.bench.dense import DENSE, DENSE_BENCHMARKED, DENSE_BYTES_PER_TRIPLET
from tripletlab.bench.loss_cases import memory_batch, parse_labels
from tripletlab.bench.loss_report import (
    header,
    markdown_table,
    memory_device,
    progress,
    ratio_of,
    write_csv,
)
from tripletlab.bench.pml import pml_rows
from tripletlab.losses import engines
from tripletlab.registry import STRATEGIES

DEFAULT_SIZES = (64, 256, 1024, 2048, 4096)
DEFAULT_LABELS = ("pk", "random10", "random100")
DEFAULT_CSV = "outputs/bench/losses.csv"


def ours() -> dict[str, Callable]:
    """Every registered strategy (the package's, then the installed plugins', in the order
    they are declared), batch-hard first (the ratios' baseline): name -> its function."""
    names = sorted(STRATEGIES.registered(), key=lambda n: n != "batch_hard")
    return {name: STRATEGIES.get(name) for name in names}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def make_step(fn: Callable, margin: float, soft_margin: bool, jit: bool) -> Callable:
    """One forward + backward pass in a tf.function: (labels, emb) -> (loss, d loss / d emb)."""

    @tf.function(jit_compile=jit)
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss, _ = fn(labels, embeddings, margin=margin, soft_margin=soft_margin)
        return loss, tape.gradient(loss, embeddings)

    return step


def _call(step: Callable, labels, emb) -> float:
    loss, grad = step(labels, emb)
    grad.numpy()  # wait for the result
    return float(loss)


def peak_memory_mb(step: Callable, labels, emb) -> float:
    """Peak MB the allocator reaches during one call, above what was allocated before it."""
    device = memory_device()
    try:
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        _call(step, labels, emb)
        return (tf.config.experimental.get_memory_info(device)["peak"] - before) / 2**20
    except (ValueError, RuntimeError):  # an allocator without statistics
        return float("nan")


def measure_interleaved(steps: dict, labels, emb, warmup: int, repeats: int) -> dict:
    """Time several steps on the same batch: {key: step} -> {key: figures}.

    The repeats go round-robin over the steps, so a change in the machine's load (other
    processes on a shared CPU) hits every case alike and the ratios between them stay fair.
    """
    figures = {key: {"times": []} for key in steps}
    for key, step in steps.items():
        for _ in range(max(warmup, 1)):  # at least one: the first call traces
            figures[key]["loss"] = _call(step, labels, emb)
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            _call(step, labels, emb)
            figures[key]["times"].append(time.perf_counter() - start)
    out = {}
    for key, step in steps.items():
        times = figures[key]["times"]
        out[key] = {
            "ms_median": statistics.median(times) * 1e3,
            "ms_min": min(times) * 1e3,
            "peak_mb": peak_memory_mb(step, labels, emb),
            "loss": figures[key]["loss"],
        }
    return out


def cases_of(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(labels regime, B, M) of every case: the sizes without memory (M = 0), then the
    ``--xbm`` ones."""
    plain = [(regime, b, 0) for regime in args.labels for b in args.sizes]
    return plain + [(regime, b, m) for regime in args.labels for b, m in args.xbm]


def run(args: argparse.Namespace) -> list[dict]:
    """Every case, timed here; peak memory from a second process when this one's allocator
    keeps no statistics (CPU), unless --memory off."""
    cases = cases_of(args)
    rows = [row for regime, b, m in cases for row in run_case(args, regime, b, m)]
    missing = [row for row in rows if "ms_median" in row and not np.isfinite(row["peak_mb"])]
    if missing and args.memory == "auto":
        peaks = peaks_in_child(args)
        for row in rows:
            if _row_key(row) in peaks:
                row["peak_mb"] = peaks[_row_key(row)]
        for regime, b, m in cases:
            _add_ratios(
                {
                    (r["strategy"], r["impl"]): r
                    for r in rows
                    if (r["labels"], r["batch_size"], r["memory_size"]) == (regime, b, m)
                }
            )
    return rows + pml_rows(args, cases)


def _row_key(row: dict) -> str:
    memory = f" M={row['memory_size']}" if row["memory_size"] else ""
    return f"{row['labels']} {row['batch_size']}{memory} {row['strategy']} {row['impl']}"


def peaks_in_child(args: argparse.Namespace) -> dict:
    """{row key: peak MB} for every case, measured by ``--memory-json`` in a new process with
    TensorFlow's BFC allocator (the CPU allocator with statistics)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "peaks.json"
        argv = [sys.executable, "-m", "tripletlab.bench.losses", "--memory-json", str(out)]
        argv += ["--sizes", *map(str, args.sizes), "--labels", ",".join(args.labels)]
        argv += ["--dim", str(args.dim), "--images-per-class", str(args.images_per_class)]
        argv += ["--embeddings", args.embeddings]
        argv += ["--xbm", *(f"{b}x{m}" for b, m in args.xbm)] if args.xbm else []
        argv += ["--margin", str(args.margin), "--dense-cap-gb", str(args.dense_cap_gb)]
        argv += ["--soft-margin"] * args.soft_margin + ["--jit"] * args.jit
        env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
        print("peak memory: a second process with the BFC allocator ...", file=sys.stderr)
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def memory_only(args: argparse.Namespace) -> dict:
    """{row key: peak MB}: one traced call, then one measured call per case, no timing."""
    peaks = {}
    for regime, b, m in cases_of(args):
        labels, emb, _, by_key, steps = _case(args, regime, b, m)
        for key, step in steps.items():
            _call(step, labels, emb)
            peaks[_row_key(by_key[key])] = peak_memory_mb(step, labels, emb)
    return peaks


def run_case(args: argparse.Namespace, regime: str, b: int, m: int = 0) -> list[dict]:
    """Every strategy (and dense form) on one batch: labels regime, batch size b, a
    cross-batch memory of m entries (0: none)."""
    labels, emb, _, by_key, steps = _case(args, regime, b, m)
    for key, figures in measure_interleaved(steps, labels, emb, args.warmup, args.repeats).items():
        by_key[key].update(figures)
    _add_ratios(by_key)
    for row in by_key.values():
        progress(row)
    return list(by_key.values())


def _case(args: argparse.Namespace, regime: str, b: int, m: int = 0):
    """-> (labels, emb, base row, {(strategy, impl): row}, {(strategy, impl): step}).

    m > 0: every strategy mines the batch against batch ∪ memory ([b, b + m] distances);
    no dense forms."""
    labels, emb, memory = memory_batch(args, regime, b, m)
    columns = labels if m == 0 else tf.concat([labels, memory[0]], axis=0)
    counts = np.bincount(columns.numpy())
    most_positives = int(counts[labels.numpy()].max()) - 1
    base = {
        "labels": regime,
        "batch_size": b,
        "memory_size": m,
        "dim": args.dim,
        "images_per_class": args.images_per_class if regime == "pk" else None,
        "classes": int(np.count_nonzero(counts)),
        "largest_class": int(counts.max()),
        "embeddings": args.embeddings,
        "soft_margin": args.soft_margin,
        "jit": args.jit,
        "repeats": args.repeats,
        "note": "",
    }
    by_key, steps = {}, {}
    strategies = ours()
    for strategy in strategies:
        impls = ["ours"] + (["dense"] if strategy in DENSE_BENCHMARKED and m == 0 else [])
        for impl in impls:
            row = dict(base, strategy=strategy, impl=impl, engine="-")
            if impl == "ours":  # the engine "auto" runs here (tripletlab.losses.engines)
                row["engine"] = engines.auto_engine(
                    strategy, b, b + m, most_positives, args.jit, args.soft_margin
                )
            estimate_gb = DENSE_BYTES_PER_TRIPLET * b**3 / 1e9
            if impl == "dense" and estimate_gb > args.dense_cap_gb:
                cap = args.dense_cap_gb
                row["note"] = f"skipped: ~{estimate_gb:.1f} GB of B^3 tensors > cap {cap} GB"
            else:
                fn = strategies[strategy] if impl == "ours" else DENSE[strategy]
                if m:
                    fn = functools.partial(fn, memory=memory)
                steps[strategy, impl] = make_step(fn, args.margin, args.soft_margin, args.jit)
            by_key[strategy, impl] = row
    return labels, emb, base, by_key, steps


def _add_ratios(by_key: dict) -> None:
    """Ratios within one batch size: vs ours batch-hard, and dense / ours."""
    hard = by_key["batch_hard", "ours"]
    for (strategy, impl), row in by_key.items():
        row["time_vs_batch_hard"] = ratio_of(row.get("ms_median"), hard.get("ms_median"))
        row["mem_vs_batch_hard"] = ratio_of(row.get("peak_mb"), hard.get("peak_mb"))
        dense = by_key.get((strategy, "dense"))
        if impl == "ours" and dense is not None:
            row["time_dense_over_ours"] = ratio_of(dense.get("ms_median"), row.get("ms_median"))
            row["mem_dense_over_ours"] = ratio_of(dense.get("peak_mb"), row.get("peak_mb"))
            # Both count the same triplets: a different loss would make the timing moot.
            if "loss" in dense and not np.isclose(row["loss"], dense["loss"], rtol=1e-4):
                row["note"] = f"LOSS MISMATCH: ours {row['loss']:.6g}, dense {dense['loss']:.6g}"


def _batch_and_memory(text: str) -> tuple[int, int]:
    """ "256x4096" -> (256, 4096): a batch size >= 2 and a memory size >= 1."""
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text)
    if match is None or int(match.group(1)) < 2 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BxM, e.g. 256x4096 (B >= 2, M >= 1)")
    return int(match.group(1)), int(match.group(2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.bench losses",
        description="Time and peak memory of the triplet losses, ours vs the dense forms.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (>= 1)")
    parser.add_argument("--dim", type=int, default=64, help="embedding size D")
    parser.add_argument("--images-per-class", type=int, default=4, help="K of the PK labels")
    parser.add_argument(
        "--labels",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(DEFAULT_LABELS),
        help="label regimes, comma-separated: pk and/or random<N> (N classes, uniform); "
        f"default {','.join(DEFAULT_LABELS)}",
    )
    parser.add_argument(
        "--embeddings",
        choices=("random", "clustered"),
        default="random",
        help="random: no class structure; clustered: class centres + noise (see make_batch)",
    )
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--soft-margin", action="store_true")
    parser.add_argument("--jit", action="store_true", help="tf.function(jit_compile=True)")
    parser.add_argument(
        "--dense-cap-gb", type=float, default=2.0, help="skip dense cases estimated above this"
    )
    parser.add_argument("--csv", type=Path, default=Path(DEFAULT_CSV), help="output CSV path")
    parser.add_argument(
        "--memory",
        choices=("auto", "off"),
        default="auto",
        help="auto: peak memory, from a second process when the CPU allocator has no "
        "statistics; off: no peak memory",
    )
    parser.add_argument(
        "--xbm",
        type=_batch_and_memory,
        nargs="*",
        default=[],
        metavar="BxM",
        help="cross-batch memory cases, e.g. 256x4096: every strategy on a batch of B "
        "mined against batch + M memory entries ([B, B+M]), ratios to batch-hard on the same "
        "problem; none by default",
    )
    parser.add_argument("--memory-json", type=Path, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if min(args.sizes) < 2 or args.repeats < 1 or args.images_per_class < 1 or args.dim < 1:
        parser.error("--sizes must be >= 2; --repeats, --images-per-class, --dim >= 1")
    try:
        if not args.labels:
            raise ValueError("--labels is empty")
        for regime in args.labels:
            parse_labels(regime)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_json is not None:  # the second process of peaks_in_child
        args.memory_json.write_text(json.dumps(memory_only(args)))
        return 0
    rows = run(args)
    write_csv(rows, args.csv)
    print(header(args))
    print()
    print(markdown_table(rows))
    print(f"\nCSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
