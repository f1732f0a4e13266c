"""``bench losses``' output: the progress lines, the markdown tables, the header (machine,
allocator) and the CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tripletlab.bench.loss_cases import parse_labels

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


def memory_device() -> str:
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def ratio_of(a, b):
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return a / b


def progress(row: dict) -> None:
    figures = row.get("ms_median")
    text = f"{row['ms_median']:9.1f} ms {row['peak_mb']:9.1f} MB" if figures is not None else "-"
    print(
        f"{row['labels']:<10} B={row['batch_size']:<5} {row['strategy']:<10} {row['impl']:<5} "
        f"{text} {row['note']}",
        file=sys.stderr,
        flush=True,
    )


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
                _fmt(ratio_of(p, o), ".1f", "x")
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
    device = memory_device()
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
