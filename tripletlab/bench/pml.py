"""pytorch-metric-learning on the same batches as ``bench losses``, when it is importable."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from tripletlab.bench.loss_cases import memory_batch
from tripletlab.bench.loss_report import progress

PML_STRATEGIES = ("batch_hard", "easy_positive", "distance_weighted")


def pml_loss(pml_losses, pml_miners, strategy: str, margin: float, dim: int, slots: int):
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


def prefill(torch, xbm, memory, b: int) -> None:
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
            fn = pml_loss(pml_losses, pml_miners, strategy, args.margin, args.dim, slots)
            if m:
                prefill(torch, fn, memory, b)

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
            progress(dict(row, peak_mb=float("nan")))
    return rows
