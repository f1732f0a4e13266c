"""Training-speed benchmark: images/s per backbone, share of the CPU's FP32 peak, eval time.

``python -m tripletlab.bench train`` times the real train step (model, loss, Adam) on the
real pipeline (Fashion-MNIST if present, else random images of the same shape) and prints
one table; evaluation (embedding train + test, then the retrieval metrics) is timed
separately. Each model is timed in float32 and in the precision that training picks here
(``trainer.mixed_precision=auto``: bfloat16 on CPUs with AMX and on recent GPUs), side by
side; ``--precision`` and ``--jit`` choose others (``--precision float16 --jit true``).

Pretrained backbones run on random RGB images of ``--image-size`` (``--models
mobilenetv3_small resnet50 --image-size 224 --skip-eval``; weights none: the speed is the
same), to set beside ``python -m tripletlab.bench data`` (the streamed input pipeline's
images/s at that size).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tripletlab.runtime import PRECISION_POLICIES, cpu_flags, has_fast_bfloat16

DEFAULT_CSV = Path("outputs/bench/train.csv")
TRAIN_SIZE = 60000
LARGE_IMAGES = 2048  # random images made at sizes other than 28 x 28 (224 px: 300 MB)


def cpu_peak_gflops() -> tuple[float, str]:
    """FP32 peak of this machine's CPU cores available to us, and how it was derived.

    cores x clock x FLOPs per cycle: 64 with AVX-512 (two 16-wide FMA units), 32 with
    AVX2 + FMA, 16 otherwise. The clock is /proc/cpuinfo's current MHz (no turbo).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    ghz = float(mhz.group(1)) / 1000 if mhz else 2.0
    flags = cpu_flags()
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    peak = cores * ghz * per_cycle
    return peak, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the conv and dense layers for one image (the bulk of the work),
    nested models (a keras.applications backbone) included."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c_out * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def load_images(dataset: str, image_size: int | None = None):
    """(x_train, y_train, x_test, y_test): the real data if it is here, else random images
    (LARGE_IMAGES random RGB ones at ``image_size``, when it is given)."""
    from tripletlab.data import find_idx_folder, load_dataset

    if image_size:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (LARGE_IMAGES, image_size, image_size, 3), dtype=np.uint8)
        y = rng.integers(0, 32, LARGE_IMAGES)
        return x, y, x[:512], y[:512], f"random {image_size}x{image_size} RGB images"
    if dataset == "fashion_mnist" and find_idx_folder("fashion_mnist") is not None:
        d = load_dataset(SimpleNamespace(name="fashion_mnist", download=False))
        return d.x_train, d.y_train, d.x_test, d.y_test, "fashion_mnist"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (TRAIN_SIZE, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, TRAIN_SIZE)
    return x, y, x[:10000], y[:10000], "random 28x28 images"


def time_loss(strategy: str, labels, dim: int, steps: int) -> float:
    """Seconds of the loss alone, forward + backward (d loss / d embeddings), on the train
    step's labels [B] and unit-norm random float32 embeddings [B, dim]: its share of the
    step (the train step also runs the backbone, the tape through it and Adam)."""
    import tensorflow as tf

    from tripletlab import losses

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(int(labels.shape[0]), dim)).astype(np.float32)
    emb = tf.constant(emb / np.linalg.norm(emb, axis=1, keepdims=True))

    @tf.function
    def loss_step(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = losses.triplet_loss(y, e, strategy, 0.2)[0]
        return value, tape.gradient(value, e)

    for _ in range(3):  # trace, warm up
        float(loss_step(labels, emb)[0])
    t0 = time.perf_counter()
    for _ in range(steps):
        value = loss_step(labels, emb)[0]
    float(value)
    return (time.perf_counter() - t0) / steps


def bench_model(name: str, precision: str, data, args) -> dict:
    import keras
    import tensorflow as tf

    from tripletlab.data.pipeline import TrainPipeline
    from tripletlab.inference import make_embed_step
    from tripletlab.models import build_model
    from tripletlab.training.steps import make_train_step

    x_train, y_train, x_test, y_test = data
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    gpus = tf.config.list_physical_devices("GPU")
    jit = bool(gpus) if args.jit == "auto" else args.jit == "true"
    model_cfg = SimpleNamespace(
        name=name,
        embedding_size=64,
        l2_normalize=True,
        num_channels=32,
        batch_norm=True,
        weights="none",  # pretrained backbones: the same speed as with ImageNet's weights
        freeze_batch_norm=True,
    )
    model = build_model(model_cfg, x_train.shape[1:])
    optimizer = keras.optimizers.Adam(1e-3)
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    mining = SimpleNamespace(strategy=args.mining, margin=0.2, squared=False, soft_margin=False)
    train_step = make_train_step(
        model, optimizer, mining, scales_loss=precision == "float16", jit_compile=jit
    )
    embed_step = make_embed_step(model, jit)
    sampler = SimpleNamespace(name="pk", classes_per_batch=8, images_per_class=args.batch_size // 8)
    pipe = TrainPipeline(x_train, y_train, sampler, args.batch_size, seed=0)
    batch = pipe.batch_indices(0).shape[1]

    # The input pipeline alone.
    t0 = time.perf_counter()
    n = sum(1 for _ in pipe.epoch(1).take(args.steps))
    pipeline_ips = n * batch / (time.perf_counter() - t0)

    # The train step on the real pipeline, after warm-up (tracing, autotuning).
    dataset = pipe.epoch(2).repeat()  # enough batches whatever --steps and --max-images
    it = iter(dataset)
    for _ in range(args.warmup):
        float(train_step(*next(it))[0])
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(*next(it))[0]
    float(loss)
    step_s = (time.perf_counter() - t0) / args.steps
    ips = batch / step_s
    loss_s = time_loss(args.mining, next(it)[1], model_cfg.embedding_size, args.steps)

    # Evaluation: embed train + test, then the retrieval metrics and kNN.
    from tripletlab.data.pipeline import eval_dataset
    from tripletlab.metrics import evaluate_embeddings

    def embed(images):
        return np.concatenate([embed_step(b).numpy() for b in eval_dataset(images, 1024)])

    embed_s = metrics_s = None
    if not args.skip_eval:
        embed(x_test[:1024])  # trace
        t0 = time.perf_counter()
        test_emb, train_emb = embed(x_test), embed(x_train)
        embed_s = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        evaluate_embeddings(test_emb, y_test, train_emb, y_train, knn_k=10)
        metrics_s = round(time.perf_counter() - t0, 2)
    keras.mixed_precision.set_global_policy("float32")

    flops = 3 * forward_flops(model)  # forward + backward (about 2x forward)
    return {
        "model": name,
        "batch": batch,
        "precision": precision,
        "jit": jit,
        "ms_per_step": round(step_s * 1000, 2),
        "loss_ms": round(loss_s * 1000, 3),
        "loss_share": round(loss_s / step_s, 3),
        "images_per_second": round(ips, 1),
        "epoch_seconds": round(TRAIN_SIZE / ips, 2),  # a full Fashion-MNIST epoch
        "pipeline_images_per_second": round(pipeline_ips, 1),
        "mflop_per_image": round(flops / 1e6, 2),
        "gflops": round(flops * ips / 1e9, 1),
        "embed_seconds": embed_s,
        "metrics_seconds": metrics_s,
        "image_shape": "x".join(str(d) for d in x_train.shape[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tripletlab.bench train", description=__doc__)
    parser.add_argument("--models", nargs="+", default=["lenet", "small_cnn", "vgg_gap"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mining", default="semi_hard")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["auto", "off", "float16", "bfloat16"],
        default=["off", "auto"],
        help="one row per precision and model; auto is what training picks here "
        "(trainer.mixed_precision=auto). Default: float32 beside auto",
    )
    parser.add_argument("--jit", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--dataset", choices=["fashion_mnist", "random"], default="fashion_mnist")
    parser.add_argument(
        "--max-images", type=int, default=0, help="use only the first N train and test images"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="random RGB images of this size (224 for the pretrained backbones)",
    )
    parser.add_argument("--skip-eval", action="store_true", help="time the train step only")
    parser.add_argument("--peak-gflops", type=float, help="override the computed FP32 peak")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    *arrays, source = load_images(args.dataset, args.image_size)
    if args.max_images:  # a quick check (tests): fewer images to embed in the eval timing
        arrays = [a[: args.max_images] for a in arrays]
    gpus = tf.config.list_physical_devices("GPU")
    device = "CPU"
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU ({details.get('device_name', gpus[0].name)})"
    peak, how = (args.peak_gflops, "given") if args.peak_gflops else cpu_peak_gflops()
    auto = "bfloat16" if has_fast_bfloat16(gpus) else "off"
    precisions = list(dict.fromkeys(auto if p == "auto" else p for p in args.precision))
    # Precisions side by side for each model, so that their ratio is measured in one run.
    rows = [bench_model(name, p, arrays, args) for name in args.models for p in precisions]
    for row in rows:
        row["device"] = device
        # The FP32 peak: the share says how far float32 is from it (bf16's peak is higher).
        row["peak_share"] = None if gpus else round(row["gflops"] / peak, 3)
        same_model_fp32 = [
            r for r in rows if r["model"] == row["model"] and r["precision"] == "off"
        ]
        row["speedup_vs_float32"] = (
            round(same_model_fp32[0]["ms_per_step"] / row["ms_per_step"], 2)
            if same_model_fp32
            else None
        )

    print(f"\ndata: {source}; device: {device}; mining {args.mining}")
    if not gpus:
        print(f"CPU FP32 peak {peak:.0f} GFLOP/s ({how})")
    header = (
        "| model | precision | batch | ms/step | loss ms (share) | images/s | epoch s (60k) "
        "| x float32 "
        "| pipeline img/s | MFLOP/img | GFLOP/s | % of FP32 peak | embed s | metrics s |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        share = "-" if r["peak_share"] is None else f"{100 * r['peak_share']:.0f}%"
        speedup = "-" if r["speedup_vs_float32"] is None else f"{r['speedup_vs_float32']:.2f}"
        print(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['ms_per_step']} "
            f"| {r['loss_ms']} ({100 * r['loss_share']:.0f}%) | {r['images_per_second']:.0f} | {r['epoch_seconds']} | {speedup} "
            f"| {r['pipeline_images_per_second']:.0f} "
            f"| {r['mflop_per_image']} | {r['gflops']} | {share} | {r['embed_seconds']} "
            f"| {r['metrics_seconds']} |"
        )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
