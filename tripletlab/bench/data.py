"""Input-pipeline benchmark: how fast batches stream from image files, and the peak memory.

``python -m tripletlab.bench data --root DIR`` indexes a dataset the way training does
(``dataset=image_folder`` or a benchmark layout with ``--dataset``; every file's header is
checked), then draws training batches through the real pipeline (sampler, parallel decode
and resize, augmentation, prefetch) without a model, and prints one table row: images/s
and the process's peak resident memory (RSS). Run it on two folders of different sizes to
see that memory does not grow with the number of images; compare its images/s with
``python -m tripletlab.bench train --models mobilenetv3_small --image-size 224`` to see
whether the input could be the bottleneck.

``--make-jpegs N --out DIR`` first writes N synthetic JPEGs (``--classes`` sub-folders,
``--jpeg-size`` pixels, smooth colour fields plus noise, like small photos) to benchmark on.

``--memory`` measures what a whole run costs instead: the same capped run (mobilenetv3_small
with ``model.weights=none``, ``--image-size`` 96 px, ``--steps`` 20 training steps, then the
full evaluation, k-NN and projector of the last epoch) on folders of ``--streamed`` sizes
(2,000, 20,000 and 40,000 JPEGs by default, ``dataset.stream=true``) and ``--in-memory``
sizes (20,000, ``dataset.stream=false``), each in its own process, whose peak RSS
(``ru_maxrss``) is one row of one table; ``--table FILE`` also writes it as Markdown with
the machine, precision, date, commit and command. The JPEGs (64x64 by default) are written
once under ``--work`` (the largest folder; the others are hard links to its first files).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_CSV = Path("outputs/bench/data.csv")
DEFAULT_WORK = Path(tempfile.gettempdir()) / "tripletlab-bench-data"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_jpegs(out: Path, count: int, classes: int, size: tuple[int, int], seed: int = 0) -> None:
    """``count`` JPEGs in ``classes`` sub-folders of ``out``: a smooth colour field per
    image (a random 4x4 grid, upsampled) plus noise, saved at quality 90."""
    from PIL import Image

    from tripletlab.data.preprocess import resize

    rng = np.random.default_rng(seed)
    w, h = size
    for c in range(classes):
        (out / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"class_{i % classes:04d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = resize(grid, h, w).numpy()  # upsampled by the one resize
        noisy = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)


def jpeg_folder(work: Path, count: int, largest: int, classes: int, size: tuple[int, int]) -> Path:
    """A folder of ``count`` synthetic JPEGs under ``work``, made once: the folder of
    ``largest`` is written by :func:`make_jpegs`, a smaller one holds hard links to its
    first ``count`` files (the same images, no second copy on disk)."""
    full = work / f"jpegs_{largest}_{size[0]}x{size[1]}"
    make_jpegs(full, largest, classes, size)
    if count == largest:
        return full
    subset = work / f"jpegs_{count}_{size[0]}x{size[1]}"
    for i in range(count):
        rel = Path(f"class_{i % classes:04d}") / f"{i:06d}.jpg"
        target = subset / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(full / rel, target)
    return subset


def capped_run_overrides(root: Path, stream: str, image_size: int, steps: int) -> list[str]:
    """The capped run of issue 19: mobilenetv3_small (no download), one epoch of ``steps``
    batches, then the last epoch's full evaluation (test retrieval, k-NN over the train
    split) and the projector."""
    return [
        "dataset=image_folder",
        f"dataset.root={root}",
        f"dataset.image_size={image_size}",
        "dataset.channels=3",
        f"dataset.stream={stream}",
        "model=mobilenetv3_small",
        "model.weights=none",
        "trainer.epochs=1",
        f"trainer.steps_per_epoch={steps}",
        "trainer.progress=log",
    ]


def capped_run(root: Path, stream: str, image_size: int, steps: int) -> dict:
    """Train the capped run in this process; its peak RSS and what it ran on."""
    import tripletlab
    from tripletlab.run_folder import RunFolder

    cfg = tripletlab.compose(capped_run_overrides(root, stream, image_size, steps))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tripletlab-bench-data-run-") as run_dir:
        tripletlab.train(cfg, run_dir)
        summary = RunFolder(run_dir).read_summary()
    return {
        "stream": stream,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "status": summary.get("status"),
        "precision": summary.get("precision"),
    }


def measure_in_subprocess(root: Path, stream: str, image_size: int, steps: int) -> dict:
    """:func:`capped_run` in a fresh Python process, so that ru_maxrss is this case's own."""
    command = [
        sys.executable,
        "-m",
        "tripletlab.bench",
        "data",
        "--capped-run",
        "--root",
        str(root),
        "--stream",
        stream,
        "--image-size",
        str(image_size),
        "--steps",
        str(steps),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the capped run on {root} (stream={stream}) failed: {tail}")
    return json.loads(lines[-1])


def machine_line() -> str:
    """The CPU model, its cores here and whether it has AVX-512 BF16 and AMX."""
    from tripletlab.runtime import cpu_flags

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags else "no AVX-512 BF16"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{cores} cores of an {model} ({bf16}, {amx})"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def memory_rows(args) -> list[dict]:
    """One capped run per case, each in its own process: streamed at ``args.streamed``
    sizes, in memory at ``args.in_memory`` sizes."""
    cases = [(n, "true") for n in args.streamed] + [(n, "false") for n in args.in_memory]
    largest = max(n for n, _ in cases)
    size = _jpeg_size(args.jpeg_size or "64x64")
    rows = []
    for count, stream in cases:
        root = jpeg_folder(args.work, count, largest, args.classes, size)
        row = measure_in_subprocess(root, stream, args.image_size, args.steps)
        row["images"] = count
        row["decoded_mb"] = round(count * args.image_size**2 * 3 / 2**20, 1)
        rows.append(row)
        print(
            f"  {count} images, stream={stream}: peak RSS {row['peak_rss_mb']:.0f} MB", flush=True
        )
    return rows


def memory_table(rows: list[dict]) -> str:
    """Markdown: one row per case; a streamed row's growth over the smallest streamed case;
    an in-memory row's peak over the streamed one of the same size, per decoded byte."""
    streamed = {r["images"]: r["peak_rss_mb"] for r in rows if r["stream"] == "true"}
    base = streamed[min(streamed)] if streamed else None
    lines = [
        "| images | dataset.stream | decoded uint8 MB | peak RSS MB | vs smallest streamed MB "
        "| over streamed / decoded | run s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        growth = "" if base is None else f"{r['peak_rss_mb'] - base:+.0f}"
        ratio = ""
        if r["stream"] != "true" and r["images"] in streamed:
            ratio = f"{(r['peak_rss_mb'] - streamed[r['images']]) / r['decoded_mb']:.2f}"
        lines.append(
            f"| {r['images']} | {r['stream']} | {r['decoded_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {growth} | {ratio} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_memory_report(path: Path, rows: list[dict], args, argv: list[str]) -> None:
    precision = sorted({str(r.get("precision")) for r in rows})
    command = "python -m tripletlab.bench data " + " ".join(argv)
    text = "\n".join(
        [
            f"# Peak memory of a capped run: streamed vs in memory ({datetime.date.today()})",
            "",
            f"Machine: {machine_line()}; precision: {', '.join(precision)} (off = float32); "
            f"commit {commit()}.",
            "",
            f"Command: `{command}`",
            "",
            "Each row is one run in its own process (peak RSS = ru_maxrss): "
            + " ".join(capped_run_overrides(Path("DIR"), "S", args.image_size, args.steps))
            + f", on synthetic {args.jpeg_size or '64x64'} JPEGs in {args.classes} classes "
            "(test_fraction 0.2): 20 training steps, then the full evaluation of the last "
            "epoch (test retrieval, k-NN over the train split) and the projector.",
            "",
            memory_table(rows),
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _counts(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _jpeg_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def bench(args) -> dict:
    import tripletlab
    from tripletlab.data import load_dataset
    from tripletlab.data.pipeline import TrainPipeline

    overrides = [
        f"dataset={args.dataset}",
        f"dataset.root={args.root}",
        f"dataset.image_size={args.image_size}",
        f"dataset.channels={args.channels}",
        f"dataset.stream={args.stream}",
    ]
    if args.dataset == "image_folder":
        overrides.append("dataset.test_fraction=0.2")
    cfg = tripletlab.compose(overrides)
    rss_start = rss_mb()
    t0 = time.perf_counter()
    data = load_dataset(cfg.dataset)
    index_s = time.perf_counter() - t0
    rss_index = rss_mb()

    from omegaconf import OmegaConf

    p, k = args.classes_per_batch, args.batch_size // args.classes_per_batch
    sampler = OmegaConf.create({"name": "pk", "classes_per_batch": p, "images_per_class": k})
    pipe = TrainPipeline(
        data.x_train,
        data.y_train,
        sampler,
        args.batch_size,
        seed=0,
        augment=args.augment,
        max_steps=args.warmup + args.steps,
    )
    batch = pipe.batch_indices(0).shape[1]
    it = iter(pipe.epoch(1))
    for _ in range(args.warmup):  # tracing, autotuning, the first prefetches
        next(it)
    t0 = time.perf_counter()
    n = 0
    for batch_images, _ in it:
        n += 1
        last = batch_images
    float(last[0, 0, 0, 0])  # the last batch is there, not only scheduled
    seconds = time.perf_counter() - t0
    return {
        "dataset": args.dataset,
        "images": len(data.x_train) + len(data.x_test),
        "train_images": len(data.x_train),
        "streamed": data.streamed,
        "image_size": args.image_size,
        "batch": batch,
        "augment": args.augment,
        "index_seconds": round(index_s, 2),
        "images_per_second": round(n * batch / seconds, 1),
        "ms_per_batch": round(1000 * seconds / max(n, 1), 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_index_mb": round(rss_index, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def main(argv: list[str] | None = None) -> int:
    from tripletlab.data.layouts import LAYOUTS

    parser = argparse.ArgumentParser(prog="python -m tripletlab.bench data", description=__doc__)
    parser.add_argument("--root", type=Path, help="the dataset folder (dataset.root)")
    parser.add_argument(
        "--dataset",
        default="image_folder",
        choices=["image_folder", *LAYOUTS],  # the datasets read from image files
    )
    parser.add_argument("--image-size", type=int, help="224 (96 with --memory)")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes-per-batch", type=int, default=8, help="P of the pk sampler")
    parser.add_argument("--augment", default="flip_translate")
    parser.add_argument("--stream", default="true", choices=["auto", "true", "false"])
    parser.add_argument(
        "--steps", type=int, help="timed batches: 30 (with --memory: training steps, 20)"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--make-jpegs", type=int, default=0, metavar="N")
    parser.add_argument("--out", type=Path, help="folder for --make-jpegs (then benchmarked)")
    parser.add_argument("--classes", type=int, default=100, help="with --make-jpegs")
    parser.add_argument("--jpeg-size", help="WxH of --make-jpegs: 256x192 (--memory: 64x64)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="appended to")
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS of whole capped runs, one table"
    )
    parser.add_argument("--streamed", type=_counts, default=[2000, 20000, 40000], metavar="N,N")
    parser.add_argument("--in-memory", type=_counts, default=[20000], metavar="N,N")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="--memory's JPEGs")
    parser.add_argument("--table", type=Path, help="--memory: also write the table here (.md)")
    parser.add_argument("--capped-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.memory or args.capped_run:
        args.image_size = args.image_size or 96
        args.steps = args.steps or 20
    if args.capped_run:  # one case of --memory, in the process that measures it
        print(json.dumps(capped_run(args.root, args.stream, args.image_size, args.steps)))
        return 0
    if args.memory:
        rows = memory_rows(args)
        print(memory_table(rows))
        if args.table:
            write_memory_report(
                args.table, rows, args, list(sys.argv[1:] if argv is None else argv)
            )
            print(f"\nwritten to {args.table}")
        return 0
    args.image_size = args.image_size or 224
    args.steps = args.steps or 30
    if args.make_jpegs:
        if args.out is None:
            parser.error("--make-jpegs needs --out DIR")
        w, h = _jpeg_size(args.jpeg_size or "256x192")
        t0 = time.perf_counter()
        make_jpegs(args.out, args.make_jpegs, args.classes, (w, h))
        print(f"{args.make_jpegs} JPEGs in {args.out} ({time.perf_counter() - t0:.0f} s)")
        args.root = args.root or args.out
    if args.root is None:
        parser.error("give --root DIR (or --make-jpegs N --out DIR)")
    row = bench(args)
    header = (
        "| images | train | streamed | size | batch | index s | images/s | ms/batch "
        "| RSS after index MB | peak RSS MB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print(
        f"| {row['images']} | {row['train_images']} | {row['streamed']} | {row['image_size']} "
        f"| {row['batch']} | {row['index_seconds']} | {row['images_per_second']:.0f} "
        f"| {row['ms_per_batch']} | {row['rss_after_index_mb']:.0f} | {row['peak_rss_mb']:.0f} |"
    )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.exists()
    with args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(f"\nappended to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
