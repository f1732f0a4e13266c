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
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import time
from pathlib import Path

import numpy as np

DEFAULT_CSV = Path("outputs/bench/data.csv")


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

    rng = np.random.default_rng(seed)
    w, h = size
    for c in range(classes):
        (out / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"class_{i % classes:04d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))
        noisy = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)


def bench(args) -> dict:
    import tripletlab
    from tripletlab.data import load_dataset
    from tripletlab.pipeline import TrainPipeline

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
    parser = argparse.ArgumentParser(prog="python -m tripletlab.bench data", description=__doc__)
    parser.add_argument("--root", type=Path, help="the dataset folder (dataset.root)")
    parser.add_argument(
        "--dataset",
        default="image_folder",
        choices=["image_folder", "cub200", "cars196", "sop", "inshop"],
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes-per-batch", type=int, default=8, help="P of the pk sampler")
    parser.add_argument("--augment", default="flip_translate")
    parser.add_argument("--stream", default="true", choices=["auto", "true", "false"])
    parser.add_argument("--steps", type=int, default=30, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--make-jpegs", type=int, default=0, metavar="N")
    parser.add_argument("--out", type=Path, help="folder for --make-jpegs (then benchmarked)")
    parser.add_argument("--classes", type=int, default=100, help="with --make-jpegs")
    parser.add_argument("--jpeg-size", default="256x192", help="WxH, with --make-jpegs")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="appended to")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.make_jpegs:
        if args.out is None:
            parser.error("--make-jpegs needs --out DIR")
        w, h = (int(v) for v in args.jpeg_size.lower().split("x"))
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
