"""Ours beside the peers, in alternating rounds: ``python -m tripletlab.bench peer``.

For batch-hard and easy-positive (the losses users compare first) on the same batches, in one
process: ours (``engine="auto"``; the table names the form it runs), the ten-line dense
TensorFlow form (one distance matrix from one matmul, ``tf.where`` masks, row max / min, the
mean of the hinge) and, when the ``bench`` extra is installed, pytorch-metric-learning
(``TripletMarginLoss`` with ``BatchHardMiner`` / ``BatchEasyHardMiner``, in a
``CrossBatchMemory`` for the memory cases). Every call is forward + backward (the gradient
w.r.t. the embeddings).

Each round times every implementation ``--repeats`` times and keeps the median; the order of
the implementations reverses every round, so a change in the machine's load hits them alike.
The table gives the median of the rounds' medians and their spread (lowest - highest).
``--out results/bench_losses_NAME`` writes NAME.md (with machine, precision, date, commit and
command) and NAME.csv.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tripletlab.bench import pml
from tripletlab.bench.loss_cases import memory_batch
from tripletlab.losses import engines, strategies

STRATEGIES = ("batch_hard", "easy_positive")
DEFAULT_CASES = ("pk:64", "pk:256", "pk:1024", "pk:4096", "random10:1024", "pk:256+4096")
GOAL_MS = {"batch_hard": 5.0, "easy_positive": 6.0}  # issue 29, B = 1024 and 256 + 4096


def dense_form(strategy, labels, embeddings, margin, memory=None):
    """The ten-line dense TensorFlow form: [B, N] distances, masks, row max / min, mean of
    the hinge (easy-positive: nearest positive, nearest farther negative, else farthest)."""
    columns, column_labels = embeddings, labels
    if memory is not None:
        columns = tf.concat([embeddings, tf.stop_gradient(memory[1])], axis=0)
        column_labels = tf.concat([labels, memory[0]], axis=0)
    gram = tf.matmul(embeddings, columns, transpose_b=True)
    norms, column_norms = tf.reduce_sum(embeddings**2, 1), tf.reduce_sum(columns**2, 1)
    d = tf.sqrt(tf.maximum(norms[:, None] - 2 * gram + column_norms[None, :], 1e-12))
    same = tf.equal(labels[:, None], column_labels[None, :])
    pos = tf.logical_and(
        same, tf.logical_not(tf.eye(tf.shape(d)[0], tf.shape(d)[1], dtype=tf.bool))
    )
    inf = tf.constant(np.inf, d.dtype)
    negative_d = tf.where(same, inf, d)
    if strategy == "batch_hard":
        d_ap = tf.reduce_max(tf.where(pos, d, 0.0), 1)
        d_an = tf.reduce_min(negative_d, 1)
    else:
        d_ap = tf.reduce_min(tf.where(pos, d, inf), 1)
        farther = tf.reduce_min(tf.where(negative_d > d_ap[:, None], negative_d, inf), 1)
        d_an = tf.where(farther < inf, farther, tf.reduce_max(tf.where(same, -inf, d), 1))
    return tf.reduce_mean(tf.nn.relu(d_ap - d_an + margin))


def _tf_step(fn):
    @tf.function
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = fn(labels, embeddings)
        return loss, tape.gradient(loss, embeddings)

    return lambda labels, emb: float(step(labels, emb)[0])  # float(): waits for the result


def _peer_step(strategy, labels, emb, memory, margin):
    """pytorch-metric-learning's step on the same batch, or None when it is not importable."""
    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        return None
    b, dim = emb.shape
    m = 0 if memory is None else memory[0].shape[0]
    fn = pml.pml_loss(pml_losses, pml_miners, strategy, margin, dim, b + m if m else None)
    if m:
        pml.prefill(torch, fn, memory, b)
    x0, y = emb.numpy(), torch.tensor(labels.numpy().astype(np.int64))

    def step(*_):
        x = torch.tensor(x0, requires_grad=True)
        value = fn(x, y)
        value.backward()
        return float(value)

    return step


def parse_case(text: str) -> tuple[str, int, int]:
    """ "random10:256+4096" -> ("random10", 256, 4096); "pk:1024" -> ("pk", 1024, 0)."""
    match = re.fullmatch(r"(pk|random[1-9][0-9]*):([0-9]+)(?:\+([0-9]+))?", text)
    if match is None or int(match.group(2)) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABELS:B or LABELS:B+M")
    return match.group(1), int(match.group(2)), int(match.group(3) or 0)


SETTLE_S = 0.25


def time_rounds(
    steps: dict, labels, emb, rounds: int, repeats: int, warmup: int, settle: float = SETTLE_S
) -> dict:
    """{impl: step} -> {impl: (loss, [median ms of each round])}, rounds alternating.

    Each implementation's calls start ``settle`` seconds after the previous one's end: the
    thread pools of both frameworks spin-wait after their last call (PyTorch's OpenMP, TF's
    Eigen pool), and without the pause the next implementation shares the two cores with
    them (measured on 2 EPYC cores: ours 2.5 -> 4.1 ms at B = 1024 with torch's threads
    spinning, while pytorch-metric-learning's own time barely moves)."""
    losses = {
        impl: [step(labels, emb) for _ in range(max(warmup, 1))][-1] for impl, step in steps.items()
    }
    medians = {impl: [] for impl in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for impl in order:
            time.sleep(settle)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                steps[impl](labels, emb)
                times.append((time.perf_counter() - start) * 1e3)
            medians[impl].append(statistics.median(times))
    return {impl: (losses[impl], medians[impl]) for impl in steps}


def run(args) -> list[dict]:
    rows = []
    shape = argparse.Namespace(dim=args.dim, images_per_class=4, embeddings="random")
    for regime, b, m in args.cases:
        labels, emb, memory = memory_batch(shape, regime, b, m)
        memory = memory if m else None
        for strategy in args.strategies:
            ours = getattr(strategies, f"{strategy}_triplet_loss")
            steps = {
                "ours": _tf_step(
                    lambda y, e, f=ours, mem=memory: f(y, e, args.margin, memory=mem)[0]
                ),
                "dense TF": _tf_step(
                    lambda y, e, s=strategy, mem=memory: dense_form(s, y, e, args.margin, mem)
                ),
            }
            peer = None
            if args.peer_max_batch is None or b <= args.peer_max_batch:
                peer = _peer_step(strategy, labels, emb, memory, args.margin)
            if peer is not None:
                steps["pytorch-metric-learning"] = peer
            timed = time_rounds(steps, labels, emb, args.rounds, args.repeats, args.warmup)
            for impl, (loss, medians) in timed.items():
                rows.append(
                    {
                        "labels": regime,
                        "batch_size": b,
                        "memory_size": m,
                        "strategy": strategy,
                        "impl": impl,
                        "engine": engines.one_pick_engine(b, b + m) if impl == "ours" else "-",
                        "rounds": args.rounds,
                        "repeats": args.repeats,
                        "ms_median": statistics.median(medians),
                        "ms_low": min(medians),
                        "ms_high": max(medians),
                        "round_ms": " ".join(f"{x:.3f}" for x in medians),
                        "loss": loss,
                    }
                )
                print(f"{regime} {b}+{m} {strategy} {impl}: {medians}", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    keys = ["labels", "batch_size", "memory_size", "strategy"]
    out = []
    for key, group in frame.groupby(keys, sort=False):
        by = {r["impl"]: r for r in group.to_dict("records")}
        ours = by["ours"]
        line = {
            "labels": "P x 4" if key[0] == "pk" else f"{key[0][6:]} random classes",
            "B": f"{key[1]} + {key[2]} memory" if key[2] else str(key[1]),
            "strategy": key[3],
            "engine": ours["engine"],
            "ours ms": _cell(ours),
        }
        for impl, short in (("dense TF", "dense TF"), ("pytorch-metric-learning", "pml")):
            if impl in by:
                line[f"{short} ms"] = _cell(by[impl])
                line[f"{short} / ours"] = f"{by[impl]['ms_median'] / ours['ms_median']:.1f}x"
        same = np.isclose(ours["loss"], by["dense TF"]["loss"], rtol=1e-4)
        line["loss ours = dense"] = "yes" if same else f"NO ({ours['loss']:.6g})"
        out.append(line)
    frame = pd.DataFrame(out).fillna("-")  # "-": the peer was not timed at that size
    return frame.to_markdown(index=False, disable_numparse=True)


def _cell(row) -> str:
    return f"{row['ms_median']:.2f} ({row['ms_low']:.2f}-{row['ms_high']:.2f})"


def _git(*argv) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def header(args, load_before, load_after) -> str:
    cpu = "?"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = f"TensorFlow {tf.__version__}"
    try:
        import pytorch_metric_learning
        import torch

        versions += f", PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
        versions += f"pytorch-metric-learning {pytorch_metric_learning.__version__}"
        if os.environ.get("OMP_WAIT_POLICY"):
            versions += f" (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})"
    except ImportError:
        versions += "; pytorch-metric-learning not installed (pip install -e '.[bench]')"
    changed = _git("status", "--porcelain", "-uno", "--", "tripletlab/losses", "tripletlab/bench")
    dirty = " (with uncommitted changes to the losses or the bench)" if changed else ""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "-m", "tripletlab.bench", "peer", *args.argv])
    return "\n".join(
        [
            "# bench peer: batch-hard and easy-positive, ours beside the dense TF form and "
            "pytorch-metric-learning",
            "",
            f"- **Machine:** {cpu}, {os.cpu_count()} cores ({platform.machine()}), "
            f"{versions}. Load average {load_before:.1f} before, {load_after:.1f} after."
            + (f" {args.note}" if args.note else ""),
            f"- **Precision:** float32, D = {args.dim}, unit-norm random embeddings, margin "
            f"{args.margin}; forward + backward (d loss / d embeddings).",
            f"- **Date:** {now}. **Commit:** `{_git('rev-parse', '--short', 'HEAD')}`{dirty}.",
            f"- **Command:** `{command}`",
            f"- ms: median of {args.rounds} rounds (alternating order), each the median of "
            f"{args.repeats} calls; in brackets the lowest and highest round.",
            "",
            "",
        ]
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.bench peer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cases", type=parse_case, nargs="+", default=[parse_case(c) for c in DEFAULT_CASES]
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument(
        "--peer-max-batch", type=int, help="time pytorch-metric-learning only up to this B"
    )
    parser.add_argument("--note", default="", help="a sentence for the machine line")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.csv")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args)
    text = header(args, load_before, os.getloadavg()[0]) + table(rows) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        pd.DataFrame(rows).to_csv(args.out.with_suffix(".csv"), index=False, lineterminator="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
