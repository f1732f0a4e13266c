"""Benchmark of the triplet losses: ``python -m tripletlab.bench losses``.

For each batch size B and strategy it times one forward + backward pass (the gradient w.r.t.
the embeddings) inside a ``tf.function`` and measures its peak memory, for
:mod:`tripletlab.losses` ("ours") and, for batch-all and semi-hard, the textbook dense forms
("dense"): the [B, B, B] triplet tensor of omoindrot/tensorflow-triplet-loss for batch-all
and the [B*B, B] tiling of tf-addons' ``triplet_semihard_loss`` for semi-hard, re-implemented
below op for op (tf-addons is not installed) but counting exactly the triplets ours count, so
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
import pandas as pd
import tensorflow as tf

from tripletlab import losses
from tripletlab.losses import engines
from tripletlab.losses.distances import prepare
from tripletlab.losses.pieces import items, masks, ratio
from tripletlab.registry import STRATEGIES

DEFAULT_SIZES = (64, 256, 1024, 2048, 4096)
DEFAULT_LABELS = ("pk", "random10", "random100")
CLUSTER_NOISE = 0.9  # --embeddings clustered: noise scale around the class centres
DEFAULT_CSV = "outputs/bench/losses.csv"
CSV_COLUMNS = (
    "labels",
    "strategy",
    "impl",
    "engine",
    "batch_size",
    "memory_size",
    "dim",
    "images_per_class",
    "classes",
    "largest_class",
    "embeddings",
    "soft_margin",
    "jit",
    "repeats",
    "ms_median",
    "ms_min",
    "peak_mb",
    "time_vs_batch_hard",
    "mem_vs_batch_hard",
    "time_dense_over_ours",
    "mem_dense_over_ours",
    "loss",
    "note",
)
DENSE_BYTES_PER_TRIPLET = 12  # three float32 [B, B, B] tensors alive at once


# --------------------------------------------------------------------------------------------
# Dense references: O(B^3) memory. Also the gradient references of tests/losses/test_engines.py.
# --------------------------------------------------------------------------------------------


def _dense_setup(labels, embeddings, squared):
    labels, embeddings = prepare(labels, embeddings)
    d = losses.pairwise_distances(embeddings, squared)
    pos, neg = masks(labels, tf.shape(labels)[0])
    return d, pos, neg


def _mean_of_items(x, valid, margin, soft_margin):
    """x = d_ap - d_an per item, valid bool, same shape -> (loss, fraction) over valid items."""
    values, _, active = items(x, margin, soft_margin)
    n = tf.reduce_sum(tf.cast(valid, tf.int64))
    total = tf.reduce_sum(tf.where(valid, values, tf.zeros_like(values)))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    return ratio(total, n, x.dtype), ratio(n_active, n, x.dtype)


def _triplet_mask(labels):
    """omoindrot's ``_get_triplet_mask``: [B, B, B] bool, True for valid (a, p, n)."""
    not_equal = tf.logical_not(tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool))
    distinct = tf.logical_and(
        tf.logical_and(not_equal[:, :, None], not_equal[:, None, :]), not_equal[None, :, :]
    )
    label_equal = tf.equal(labels[None, :], labels[:, None])
    valid_labels = tf.logical_and(label_equal[:, :, None], tf.logical_not(label_equal[:, None, :]))
    return tf.logical_and(distinct, valid_labels)


def _dense_batch_all(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-all over the [B, B, B] tensor of every triplet, as omoindrot's
    ``batch_all_triplet_loss``: the 3-D validity mask as floats multiplied in, relu, then the
    positive triplets counted with a second 3-D comparison.

    labels [B], embeddings [B, D] -> (loss [], fraction []), same definition as
    :func:`tripletlab.losses.batch_all_triplet_loss`: counts ``> 0`` rather than the
    original's ``> 1e-16``, and divides safely instead of adding 1e-16, so both are exact.
    """
    labels, embeddings = prepare(labels, embeddings)
    d = losses.pairwise_distances(embeddings, squared)
    dtype = d.dtype
    mask = tf.cast(_triplet_mask(labels), dtype)  # [B, B, B]
    num_valid = tf.reduce_sum(mask)
    x = d[:, :, None] - d[:, None, :]  # [B, B, B]: d(a, p) - d(a, n)
    if soft_margin:
        total = tf.reduce_sum(mask * tf.nn.softplus(x))
        num_active = tf.reduce_sum(mask * tf.cast(x > 0, dtype))
        return ratio(total, num_valid, dtype), ratio(num_active, num_valid, dtype)
    triplet_loss = tf.maximum(mask * (x + tf.cast(margin, dtype)), 0.0)
    num_positive = tf.reduce_sum(tf.cast(triplet_loss > 0, dtype))
    total = tf.reduce_sum(triplet_loss)
    return ratio(total, num_positive, dtype), ratio(num_positive, num_valid, dtype)


def _dense_batch_hard(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-hard as a max over each anchor's [B, B] slice of the triplet tensor.

    max over valid (p, n) of d(a, p) - d(a, n) is the farthest positive minus the nearest
    negative; a B^3 formulation independent of the masked max / min of ours.
    """
    d, pos, neg = _dense_setup(labels, embeddings, squared)
    x = d[:, :, None] - d[:, None, :]
    valid3 = tf.logical_and(pos[:, :, None], neg[:, None, :])
    hardest = tf.reduce_max(
        tf.where(valid3, x, tf.fill(tf.shape(x), tf.constant(-np.inf, x.dtype))), axis=[1, 2]
    )
    valid = tf.reduce_any(valid3, axis=[1, 2])
    hardest = tf.where(valid, hardest, tf.zeros_like(hardest))
    return _mean_of_items(hardest, valid, margin, soft_margin)


def _masked_minimum(data, mask):
    """tf-addons: the minimum of data [N, M] over mask [N, M] (float 0/1) per row, [N, 1]."""
    axis_maximums = tf.reduce_max(data, axis=1, keepdims=True)
    return tf.reduce_min((data - axis_maximums) * mask, axis=1, keepdims=True) + axis_maximums


def _masked_maximum(data, mask):
    """tf-addons: the maximum of data [N, M] over mask [N, M] (float 0/1) per row, [N, 1]."""
    axis_minimums = tf.reduce_min(data, axis=1, keepdims=True)
    return tf.reduce_max((data - axis_minimums) * mask, axis=1, keepdims=True) + axis_minimums


def _dense_semi_hard(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Semi-hard as tf-addons' ``triplet_semihard_loss``: the distances tiled to [B*B, B].

    Row i*B + a of the tile holds anchor a's distances, compared with d(a, i) where i plays
    the positive; masked minimum / maximum by arithmetic on float masks, as there. One
    change, to match :func:`tripletlab.losses.semi_hard_triplet_loss`: pairs whose anchor has
    no negative are left out of the mean (tf-addons averages them in with a meaningless
    "negative").
    """
    d, pos, neg = _dense_setup(labels, embeddings, squared)
    dtype = d.dtype
    b = tf.shape(d)[0]
    pdist_tile = tf.tile(d, [b, 1])  # [B*B, B]
    mask = tf.logical_and(
        tf.tile(neg, [b, 1]), pdist_tile > tf.reshape(tf.transpose(d), [-1, 1])
    )  # [B*B, B]: negatives of a farther than d(a, i)
    mask_final = tf.reduce_sum(tf.cast(mask, dtype), axis=1, keepdims=True) > 0
    mask_final = tf.transpose(tf.reshape(mask_final, [b, b]))
    negatives_outside = _masked_minimum(pdist_tile, tf.cast(mask, dtype))
    negatives_outside = tf.transpose(tf.reshape(negatives_outside, [b, b]))
    negatives_inside = tf.tile(_masked_maximum(d, tf.cast(neg, dtype)), [1, b])
    semi_hard_negatives = tf.where(mask_final, negatives_outside, negatives_inside)
    valid = tf.logical_and(pos, tf.reduce_any(neg, axis=1)[:, None])
    return _mean_of_items(d - semi_hard_negatives, valid, margin, soft_margin)


DENSE = {
    "batch_all": _dense_batch_all,
    "batch_hard": _dense_batch_hard,
    "semi_hard": _dense_semi_hard,
}
# Only these have a textbook dense form worth comparing; batch-hard is O(B^2) everywhere.
DENSE_BENCHMARKED = ("batch_all", "semi_hard")


def ours() -> dict[str, Callable]:
    """Every registered strategy (the package's, then the installed plugins', in the order
    they are declared), batch-hard first (the ratios' baseline): name -> its function."""
    names = sorted(STRATEGIES.registered(), key=lambda n: n != "batch_hard")
    return {name: STRATEGIES.get(name) for name in names}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def parse_labels(regime: str) -> int | None:
    """Labels regime -> number of classes: "pk" -> None, "random<N>" (N >= 1) -> N.

    ValueError for anything else."""
    if regime == "pk":
        return None
    match = re.fullmatch(r"random([1-9][0-9]*)", regime)
    if match is None:
        raise ValueError(f"labels {regime!r}: expected pk or random<N>, e.g. random10")
    return int(match.group(1))


def make_batch(
    batch_size: int,
    dim: int,
    images_per_class: int,
    seed: int = 0,
    labels: str = "pk",
    embeddings: str = "random",
):
    """Labels [B] int32 and L2-normalised float32 embeddings [B, D].

    labels "pk": B / images_per_class classes of images_per_class each, shuffled;
    "random<N>": each label uniform over N classes (see :func:`parse_labels`).
    embeddings "random": normal, no class structure (an untrained model); "clustered": a
    normal centre per class plus 0.9 x normal noise (a model part-way through training:
    positives nearer than most negatives, with overlap).
    """
    rng = np.random.default_rng(seed)
    n_classes = parse_labels(labels)
    if n_classes is None:
        labels = rng.permutation(np.arange(batch_size) // images_per_class).astype(np.int32)
    else:
        labels = rng.integers(0, n_classes, size=batch_size).astype(np.int32)
    emb = rng.normal(size=(batch_size, dim))
    if embeddings == "clustered":
        emb = rng.normal(size=(labels.max() + 1, dim))[labels] + CLUSTER_NOISE * emb
    elif embeddings != "random":
        raise ValueError(f"embeddings {embeddings!r}: expected random or clustered")
    emb = emb.astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return tf.constant(labels), tf.constant(emb)


def make_step(fn: Callable, margin: float, soft_margin: bool, jit: bool) -> Callable:
    """One forward + backward pass in a tf.function: (labels, emb) -> (loss, d loss / d emb)."""

    @tf.function(jit_compile=jit)
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss, _ = fn(labels, embeddings, margin=margin, soft_margin=soft_margin)
        return loss, tape.gradient(loss, embeddings)

    return step


def _memory_device() -> str:
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _call(step: Callable, labels, emb) -> float:
    loss, grad = step(labels, emb)
    grad.numpy()  # wait for the result
    return float(loss)


def peak_memory_mb(step: Callable, labels, emb) -> float:
    """Peak MB the allocator reaches during one call, above what was allocated before it."""
    device = _memory_device()
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
        _progress(row)
    return list(by_key.values())


def memory_batch(args: argparse.Namespace, regime: str, b: int, m: int):
    """A batch of b with a memory of m: one batch of b + m drawn as :func:`make_batch` does,
    split into (labels [b], embeddings [b, D]) and the memory (labels [m], embeddings
    [m, D]), so the memory's classes are the batch's (PK: whole classes of K, shuffled
    across both)."""
    labels, emb = make_batch(
        b + m, args.dim, args.images_per_class, labels=regime, embeddings=args.embeddings
    )
    return labels[:b], emb[:b], (labels[b:], emb[b:])


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


# --------------------------------------------------------------------------------------------
# pytorch-metric-learning on the same batches, when it is importable
# --------------------------------------------------------------------------------------------

PML_STRATEGIES = ("batch_hard", "easy_positive", "distance_weighted")


def _pml_loss(pml_losses, pml_miners, strategy: str, margin: float, dim: int, slots: int):
    """pytorch-metric-learning's form of ``strategy`` (docs/losses.md's mapping): a
    TripletMarginLoss with a miner, wrapped in a CrossBatchMemory of ``slots`` entries
    when ``slots`` is not None."""
    miner = {
        "batch_hard": lambda: pml_miners.BatchHardMiner(),
        "easy_positive": lambda: pml_miners.BatchEasyHardMiner(
            pos_strategy="easy", neg_strategy="semihard"
        ),
        "distance_weighted": lambda: pml_miners.DistanceWeightedMiner(
            cutoff=0.5, nonzero_loss_cutoff=1.4
        ),
    }[strategy]()
    loss = pml_losses.TripletMarginLoss(margin=margin)
    if slots is None:
        return lambda emb, labels: loss(emb, labels, miner(emb, labels))
    return pml_losses.CrossBatchMemory(loss, dim, memory_size=slots, miner=miner)


def _prefill(torch, xbm, memory, b: int) -> None:
    """CrossBatchMemory enqueues the batch before mining, against its whole memory: with
    B + M slots, the M memory entries after the first B and the queue at 0, each call
    writes the batch into slots 0 .. B-1 and mines the same [B, B + M] problem as ours."""
    memory_labels, memory_embeddings = memory
    with torch.no_grad():
        xbm.embedding_memory[b:] = torch.tensor(memory_embeddings.numpy())
        xbm.label_memory[b:] = torch.tensor(memory_labels.numpy().astype(np.int64))
    xbm.queue_idx, xbm.has_been_filled = 0, True


def pml_rows(args: argparse.Namespace, cases: list[tuple[str, int, int]]) -> list[dict]:
    """Rows (impl "pml") timing pytorch-metric-learning's BatchHardMiner, BatchEasyHardMiner
    and DistanceWeightedMiner with TripletMarginLoss (and CrossBatchMemory for the --xbm
    cases, its memory filled with the same entries first) on the same batches, forward +
    backward. [] with a printed note when it is not importable."""
    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        print(
            "pytorch-metric-learning is not importable here: its rows are skipped "
            "(pip install pytorch-metric-learning to time them beside ours)",
            file=sys.stderr,
        )
        return []
    rows = []
    for regime, b, m in cases:
        labels, emb, memory = memory_batch(args, regime, b, m)
        for strategy in PML_STRATEGIES:
            slots = b + m if m else None
            fn = _pml_loss(pml_losses, pml_miners, strategy, args.margin, args.dim, slots)
            if m:
                _prefill(torch, fn, memory, b)

            def step(fn=fn, emb=emb, labels=labels):
                x = torch.tensor(emb.numpy(), requires_grad=True)
                value = fn(x, torch.tensor(labels.numpy().astype(np.int64)))
                value.backward()
                return float(value)

            times = []
            for _ in range(max(args.warmup, 1)):
                loss = step()
            for _ in range(args.repeats):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            row = {
                "labels": regime,
                "batch_size": b,
                "memory_size": m,
                "dim": args.dim,
                "strategy": strategy,
                "impl": "pml",
                "repeats": args.repeats,
                "ms_median": statistics.median(times) * 1e3,
                "ms_min": min(times) * 1e3,
                "loss": loss,
                "note": "",
            }
            rows.append(row)
            _progress(dict(row, peak_mb=float("nan")))
    return rows


def _ratio(a, b):
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return a / b


def _add_ratios(by_key: dict) -> None:
    """Ratios within one batch size: vs ours batch-hard, and dense / ours."""
    hard = by_key["batch_hard", "ours"]
    for (strategy, impl), row in by_key.items():
        row["time_vs_batch_hard"] = _ratio(row.get("ms_median"), hard.get("ms_median"))
        row["mem_vs_batch_hard"] = _ratio(row.get("peak_mb"), hard.get("peak_mb"))
        dense = by_key.get((strategy, "dense"))
        if impl == "ours" and dense is not None:
            row["time_dense_over_ours"] = _ratio(dense.get("ms_median"), row.get("ms_median"))
            row["mem_dense_over_ours"] = _ratio(dense.get("peak_mb"), row.get("peak_mb"))
            # Both count the same triplets: a different loss would make the timing moot.
            if "loss" in dense and not np.isclose(row["loss"], dense["loss"], rtol=1e-4):
                row["note"] = f"LOSS MISMATCH: ours {row['loss']:.6g}, dense {dense['loss']:.6g}"


def _progress(row: dict) -> None:
    figures = row.get("ms_median")
    text = f"{row['ms_median']:9.1f} ms {row['peak_mb']:9.1f} MB" if figures is not None else "-"
    print(
        f"{row['labels']:<10} B={row['batch_size']:<5} {row['strategy']:<10} {row['impl']:<5} "
        f"{text} {row['note']}",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(value, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _mb_spec(mb: float | None) -> str:
    return ".2f" if mb is None or not np.isfinite(mb) or mb < 10 else ".0f"


def markdown_table(rows: list[dict]) -> str:
    """One line per (labels, B, strategy): ours, its ratios to batch-hard (measured in the
    same run, on the same batch), the dense form beside it."""
    frame = pd.DataFrame(rows)
    ours = frame[frame["impl"] == "ours"]
    keys = ["labels", "batch_size", "memory_size", "strategy"]
    dense = frame[frame["impl"] == "dense"][[*keys, "ms_median", "peak_mb"]]
    merged = ours.merge(dense, on=keys, how="left", suffixes=("", "_dense"), indicator=True)
    table = pd.DataFrame(
        {
            "labels": [_labels_text(r) for r in merged.itertuples()],
            "B": [_size_text(r) for r in merged.itertuples()],
            "strategy": merged["strategy"],
            "engine": merged["engine"],
            "ours ms": [_fmt(v, ".1f") for v in merged["ms_median"]],
            "ours peak MB": [_fmt(v, _mb_spec(v)) for v in merged["peak_mb"]],
            "time / batch-hard": [_fmt(v, ".2f", "x") for v in _col(merged, "time_vs_batch_hard")],
            "mem / batch-hard": [_fmt(v, ".2f", "x") for v in _col(merged, "mem_vs_batch_hard")],
        }
    )
    has_dense = merged["_merge"] == "both"
    skipped = has_dense & merged["ms_median_dense"].isna()
    table["dense ms"] = [_fmt(v, ".1f") for v in merged["ms_median_dense"]]
    table["dense peak MB"] = [_fmt(v, _mb_spec(v)) for v in merged["peak_mb_dense"]]
    table["dense / ours time"] = [_fmt(v, ".1f", "x") for v in _col(merged, "time_dense_over_ours")]
    table["dense / ours mem"] = [_fmt(v, ".1f", "x") for v in _col(merged, "mem_dense_over_ours")]
    dense_columns = ["dense ms", "dense peak MB", "dense / ours time", "dense / ours mem"]
    table.loc[~has_dense, dense_columns] = "n/a"
    table.loc[skipped, dense_columns] = ["skipped", "skipped", "-", "-"]
    notes = merged["note"].fillna("")
    last = dense_columns[-1]
    table[last] = [f"{c} ({n})" if n else c for c, n in zip(table[last], notes, strict=True)]
    align = ("left", "right", "left", "left", *["right"] * (len(table.columns) - 4))
    text = table.to_markdown(index=False, disable_numparse=True, colalign=align)
    pml = frame[frame["impl"] == "pml"]
    if pml.empty:
        return text
    described = ["images_per_class", "largest_class"]  # the case, as ours' rows give it
    both = pml.drop(columns=described).merge(
        ours[[*keys, "ms_median", *described]], on=keys, suffixes=("", "_ours")
    )
    pml_table = pd.DataFrame(
        {
            "labels": [_labels_text(r) for r in both.itertuples()],
            "B": [_size_text(r) for r in both.itertuples()],
            "strategy": both["strategy"],
            "pytorch-metric-learning ms": [_fmt(v, ".1f") for v in both["ms_median"]],
            "ours ms": [_fmt(v, ".1f") for v in both["ms_median_ours"]],
            "pml / ours": [
                _fmt(_ratio(p, o), ".1f", "x")
                for p, o in zip(both["ms_median"], both["ms_median_ours"], strict=True)
            ],
        }
    )
    return f"{text}\n\n{pml_table.to_markdown(index=False, disable_numparse=True)}"


def _size_text(row) -> str:
    """Table text of a case's size: "256", or "256 + 4096 memory"."""
    memory = int(row.memory_size) if pd.notna(row.memory_size) else 0
    return f"{row.batch_size} + {memory} memory" if memory else str(row.batch_size)


def _labels_text(row) -> str:
    """Table text of a regime: "P x 4", or "10 random (max 121)" (the largest class)."""
    if row.labels == "pk":
        return f"P x {int(row.images_per_class)}"
    return f"{parse_labels(row.labels)} random (max {row.largest_class})"


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)


def header(args: argparse.Namespace) -> str:
    device = _memory_device()
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    return (
        f"Triplet losses, forward + backward (d loss / d embeddings) in a tf.function"
        f"{' (jit_compile)' if args.jit else ''}; TF {tf.__version__} on {device}, "
        f"{threads} threads. D = {args.dim}, {args.embeddings} embeddings; labels: P x K = "
        f"PK batches with K = "
        f"{args.images_per_class} (B / {args.images_per_class} classes), N random = each label "
        f"uniform over N classes (max = the largest class in the batch); margin {args.margin}"
        f"{', soft margin' if args.soft_margin else ''}. ms = median of {args.repeats} runs "
        f"after {args.warmup} warm-up, the cases of one batch interleaved, TF's "
        f"{_allocator_name(device)} allocator; peak MB = peak bytes the step allocates "
        f"(get_memory_info{_memory_note(device, args)}). Dense: [B,B,B] batch-all (omoindrot), "
        f"[B*B,B] tiled semi-hard (tf-addons); skipped above {args.dense_cap_gb} GB "
        f"estimated."
    )


def _bfc_on_cpu() -> bool:
    return os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")


def _allocator_name(device: str) -> str:
    if device.startswith("CPU"):
        return "BFC CPU" if _bfc_on_cpu() else "default CPU"
    return f"{device}"


def _memory_note(device: str, args: argparse.Namespace) -> str:
    if device.startswith("CPU") and not _bfc_on_cpu():
        return ", off" if args.memory == "off" else ", in a second process with the BFC allocator"
    return ""


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # dtype=object: a batch size stays "8", not "8.0", in a column with missing cells.
    frame = pd.DataFrame(rows, dtype=object).reindex(columns=list(CSV_COLUMNS))
    frame.to_csv(path, index=False, lineterminator="\n")


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
