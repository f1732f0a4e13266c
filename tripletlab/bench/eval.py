"""Evaluation cost of a training run: every epoch fully evaluated, beside the sampled schedule.

``python -m tripletlab.bench eval`` trains the default run (or the one its ``key=value``
overrides compose) once. After each epoch it evaluates the same model twice, in turn
first: as training did before (``eval.sample_queries=null``: all 70,000 images embedded,
every test query ranked, k-NN against the train split) and with the run's own settings
(``eval.sample_queries``, ``eval.full_every``, ``eval.every``). It prints one row per epoch
and the totals: evaluation seconds against training seconds for both schedules, and
whether their last-epoch metrics are identical. Both see the same model under the same load,
so the ratio between them holds even on a busy machine.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

DEFAULT_CSV = Path("outputs/bench/eval.csv")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.bench eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides, as for run.py (e.g. trainer.epochs=3 dataset.max_train=5000)",
    )
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="where the rows go")
    return parser.parse_args(argv)


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def run(overrides: list[str]) -> list[dict]:
    """One row per epoch: training seconds, both schedules' evaluation seconds and metrics."""
    from tripletlab.api import compose
    from tripletlab.inference import evaluate_split, query_sample
    from tripletlab.run_folder import RunFolder
    from tripletlab.training.loop import (
        Parts,
        evaluation_due,
        full_evaluation_due,
        load_training_data,
        setup_runtime,
    )

    cfg = compose(overrides)
    runtime, strategy = setup_runtime(cfg)
    data = load_training_data(cfg.dataset)
    epochs = cfg.trainer.epochs
    sample = query_sample(len(data.x_test), cfg.eval.sample_queries)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tripletlab-bench-eval-") as tmp:
        folder = RunFolder(Path(tmp))
        with strategy.scope():
            parts = Parts.build(cfg, data, runtime, strategy, folder, folder.checkpoints_dir)
        try:
            for epoch in range(1, epochs + 1):
                row = parts.train_epoch(epoch)
                out = {"epoch": epoch, "train_s": row["epoch_seconds"]}

                def every_epoch_full():
                    return evaluate_split(parts.embed, data, cfg.eval)[0]

                def scheduled(epoch=epoch):
                    if not evaluation_due(cfg.eval, epoch, epochs):
                        return {}
                    full = full_evaluation_due(cfg.eval, epoch, epochs)
                    queries = None if full else sample
                    return evaluate_split(parts.embed, data, cfg.eval, queries=queries, knn=full)[0]

                # Alternate which goes first, so that neither always finds warm caches.
                if epoch % 2:
                    before, t_before = _timed(every_epoch_full)
                    after, t_after = _timed(scheduled)
                else:
                    after, t_after = _timed(scheduled)
                    before, t_before = _timed(every_epoch_full)
                out.update(
                    before_eval_s=t_before,
                    after_eval_s=t_after,
                    before_p1=before["precision_at_1"],
                    after_p1=after.get("precision_at_1", math.nan),
                    before_map_r=before["map_at_r"],
                    after_map_r=after.get("map_at_r", math.nan),
                    identical=before == after,
                )
                rows.append(out)
                _print_row(out)
        finally:
            parts.checkpoints.close()
    return rows


def _print_row(r: dict) -> None:
    print(
        f"epoch {r['epoch']:>2}: train {r['train_s']:6.1f}s | every epoch full: eval "
        f"{r['before_eval_s']:5.1f}s P@1 {r['before_p1']:.4f} MAP@R {r['before_map_r']:.4f} | "
        f"scheduled: eval {r['after_eval_s']:5.1f}s P@1 {r['after_p1']:.4f} "
        f"MAP@R {r['after_map_r']:.4f}",
        flush=True,
    )


def markdown_table(rows: list[dict], overrides: list[str]) -> str:
    train = sum(r["train_s"] for r in rows)
    before = sum(r["before_eval_s"] for r in rows)
    after = sum(r["after_eval_s"] for r in rows)
    last = rows[-1]
    lines = [
        f"Run: {' '.join(overrides) or '(the default run)'}; {len(rows)} epochs, "
        f"training {train:.1f} s.",
        "",
        "| evaluation schedule | eval s (all epochs) | eval / train | final P@1 | final MAP@R |",
        "|---|---|---|---|---|",
        f"| every epoch full (before) | {before:.1f} | {before / train:.1%} | "
        f"{last['before_p1']:.4f} | {last['before_map_r']:.4f} |",
        f"| sampled, last epoch full (after) | {after:.1f} | {after / train:.1%} | "
        f"{last['after_p1']:.4f} | {last['after_map_r']:.4f} |",
        "",
        f"after / before: {after / before:.2f}x the evaluation time; last-epoch metrics "
        f"{'identical' if last['identical'] else 'DIFFERENT'}.",
    ]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    from tripletlab.io_utils import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args.overrides)
    print()
    print(markdown_table(rows, args.overrides))
    write_csv(rows, args.csv)
    print(f"\nrows: {args.csv}")
    return 0 if rows[-1]["identical"] else 1
