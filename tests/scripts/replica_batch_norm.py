"""Run by tests/test_distribute.py in a fresh process (logical devices are set per process).

``python replica_batch_norm.py N BACKBONE`` builds tripletlab's model with a
keras.applications backbone (weights none, batch norm trainable, 32x32) twice with the same
seed: once on one device, once under MirroredStrategy on N logical CPUs. Each runs one
forward pass in training mode on the same global batch, whose replica slices differ (replica
r's images are scaled into [r / N, (r + 1) / N)), with every batch norm's momentum 0 and no dropout, so its
moving statistics become the batch's moments. Prints JSON: the number of Keras batch norm
layers, the largest relative difference between the replicas' copies of a moving statistic,
the largest between a replica's copy and the single device's, and the same for the
embeddings.
"""

import json
import sys

import numpy as np


def _relative(a, b) -> float:
    """max |a - b| relative to max |b| (a statistic's channels share one scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-3))


def main(replicas: int, backbone: str) -> None:
    import keras
    import tensorflow as tf
    from omegaconf import OmegaConf

    from tripletlab.distribute import configure_cpu_devices, distribute_batches
    from tripletlab.models import build_model

    devices = configure_cpu_devices(replicas)
    distribution = tf.distribute.MirroredStrategy(devices)
    cfg = OmegaConf.create(
        {
            "name": backbone,
            "embedding_size": 8,
            "l2_normalize": False,
            "weights": "none",
            "freeze_batch_norm": False,
        }
    )
    per_replica = 2
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [(r + rng.random((per_replica, 32, 32, 3))) / replicas for r in range(replicas)]
    ).astype("float32")

    def batch_norms(model):
        inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        return [
            layer for layer in inner.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]

    def build():
        keras.utils.set_random_seed(7)
        model = build_model(cfg, (32, 32, 3))
        for bn in batch_norms(model):
            bn.momentum = 0.0  # the moving statistics become this batch's moments
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0  # EfficientNet's stochastic depth: no random difference
        return model

    single = build()
    single_embeddings = single(images, training=True).numpy()

    with distribution.scope():
        mirrored = build()
    data = distribute_batches(
        distribution,
        lambda: tf.data.Dataset.from_tensors((images, np.zeros(len(images), "int32"))),
        len(images),
    )
    sliced, _ = next(iter(data))
    outputs = distribution.run(tf.function(lambda x: mirrored(x, training=True)), args=(sliced,))
    mirrored_embeddings = np.concatenate(
        [v.numpy() for v in distribution.experimental_local_results(outputs)]
    )

    between_replicas, against_single = 0.0, 0.0
    pairs = list(zip(batch_norms(single), batch_norms(mirrored), strict=True))
    for ours, theirs in pairs:
        for name in ("moving_mean", "moving_variance"):
            reference = getattr(ours, name).numpy()
            copies = [
                v.numpy()
                for v in distribution.experimental_local_results(getattr(theirs, name).value)
            ]
            assert len(copies) == replicas
            between_replicas = max(between_replicas, *(_relative(c, copies[0]) for c in copies))
            against_single = max(against_single, *(_relative(c, reference) for c in copies))
    print(
        json.dumps(
            {
                "batch_norms": len(pairs),
                "between_replicas": between_replicas,
                "against_single_device": against_single,
                "embeddings": _relative(mirrored_embeddings, single_embeddings),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
