"""Training throughput on one device beside N replicas of ``distribute=mirrored``.

    python -m tripletlab.bench distribute                       # GPUs, or 2 logical CPUs
    python -m tripletlab.bench distribute --cpu-devices 4 --models lenet

For each model it times tripletlab's own train step (global-batch mining, the same global
batch) on the default strategy and on a MirroredStrategy, side by side in one process, and
prints images/s with their ratio; and on the replicas again with each batch norm's moments
per replica (``FusedBatchNorm(synchronized=False)``, what tripletlab did before): the cost of
the global batch's moments (one all-reduce per batch norm layer). On one CPU split into logical devices the replicas share
the same cores, so no speed-up is expected there: the figure that matters is on GPUs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

DEFAULT_CSV = Path("outputs/bench/distribute.csv")


def time_steps(distribution, model_name: str, data, args, synchronized: bool = True) -> float:
    """Images per second of the train step under ``distribution``; ``synchronized`` False:
    each replica's batch norm uses its own slice's moments."""
    import keras

    from tripletlab.data.pipeline import TrainPipeline
    from tripletlab.distribute import distribute_batches
    from tripletlab.models import FusedBatchNorm, build_model
    from tripletlab.training.steps import make_train_step

    x_train, y_train = data
    keras.utils.set_random_seed(0)
    with distribution.scope():
        model_cfg = SimpleNamespace(
            name=model_name, embedding_size=64, l2_normalize=True, num_channels=32, batch_norm=True
        )
        model = build_model(model_cfg, x_train.shape[1:])
        for layer in model.layers:
            if isinstance(layer, FusedBatchNorm):
                layer.synchronized = synchronized
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
        mining = SimpleNamespace(strategy=args.mining, margin=0.2, squared=False, soft_margin=False)
        step = make_train_step(model, optimizer, mining, distribution=distribution)
    sampler = SimpleNamespace(name="pk", classes_per_batch=8, images_per_class=args.batch_size // 8)
    pipeline = TrainPipeline(x_train, y_train, sampler, args.batch_size, seed=0)
    batches = iter(
        distribute_batches(distribution, lambda: pipeline.epoch(1).repeat(), args.batch_size)
    )
    for _ in range(args.warmup):
        float(step(*next(batches))[0])
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(*next(batches))[0]
    float(loss)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.bench distribute", description=__doc__
    )
    parser.add_argument("--models", nargs="+", default=["lenet", "small_cnn"])
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (P x K)")
    parser.add_argument("--mining", default="semi_hard")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=2,
        help="logical CPU devices for the replicas when there is no GPU (default 2)",
    )
    parser.add_argument("--max-images", type=int, default=4096, help="training images to use")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tripletlab.bench.train import load_images
    from tripletlab.distribute import configure_cpu_devices
    from tripletlab.io_utils import atomic_write_csv

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        devices, kind = None, f"{len(gpus)} GPU(s)"
    else:
        devices = configure_cpu_devices(args.cpu_devices)
        kind = f"{args.cpu_devices} logical CPUs on {os.cpu_count()} cores"
    x_train, y_train, *_, source = load_images("fashion_mnist")
    data = (x_train[: args.max_images], y_train[: args.max_images])
    mirrored = tf.distribute.MirroredStrategy(devices)
    replicas = mirrored.num_replicas_in_sync

    rows = []
    for name in args.models:
        one = time_steps(tf.distribute.get_strategy(), name, data, args)
        many = time_steps(mirrored, name, data, args)
        per_replica_bn = time_steps(mirrored, name, data, args, synchronized=False)
        rows.append(
            {
                "model": name,
                "global_batch": args.batch_size,
                "replicas": replicas,
                "one_device_images_per_second": round(one, 1),
                "replicas_images_per_second": round(many, 1),
                "speedup": round(many / one, 2),
                "replicas_per_replica_bn_images_per_second": round(per_replica_bn, 1),
                "devices": kind,
            }
        )
    print(f"\ndata: {source}; {kind}; mining {args.mining}; global batch {args.batch_size}\n")
    print(
        f"| model | 1 device img/s | {replicas} replicas img/s | ratio | "
        f"{replicas} replicas, per-replica BN img/s |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['one_device_images_per_second']:.0f} | "
            f"{r['replicas_images_per_second']:.0f} | {r['speedup']:.2f}x | "
            f"{r['replicas_per_replica_bn_images_per_second']:.0f} |"
        )
    atomic_write_csv(args.csv, rows, list(rows[0]))
    print(f"\nwrote {args.csv}")
    return 0
