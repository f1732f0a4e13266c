"""Run by tests/test_attack_replicas.py in a fresh process (logical devices are set per process).

``python replica_variants.py N NAME...`` trains each named variant (VARIANTS) for a few
steps with tripletlab's model and train step (Adam), twice from the same seed: on one device
and under MirroredStrategy on N logical CPUs, on the same global batches. Prints one JSON
line: per variant, the largest difference between the two runs' per-step losses, and
between their moving statistics relative to the statistic's scale.
"""

import json
import sys

import numpy as np

# name: (model overrides, mining overrides, global batch, steps, precision, image shape,
# pixels): "unit" images in [0, 1]; "white" 0.95 + 0.05 u (a mostly white page); "ten"
# 10 + 0.1 u (a channel whose mean is large against its spread: moments combined as
# E[x^2] - E[x]^2 lost the variance to cancellation, 1.7e-5 in the loss after 3 steps).
VARIANTS = {
    "small_cnn/batch_hard": (
        ["model=small_cnn"],
        ["mining=batch_hard"],
        12,
        3,
        "float32",
        (8, 8, 1),
        "unit",
    ),
    "vgg_gap/semi_hard/rgb": (
        ["model=vgg_gap"],
        ["mining=semi_hard"],
        24,
        2,
        "float32",
        (8, 8, 3),
        "unit",
    ),
    "small_cnn/distance_weighted+memory": (
        ["model=small_cnn", "model.l2_normalize=true"],
        ["mining=distance_weighted", "mining.memory_size=48"],
        24,
        3,
        "float32",
        (8, 8, 1),
        "unit",
    ),
    "lenet/batch_all": (
        ["model=lenet"],
        ["mining=batch_all"],
        12,
        2,
        "float32",
        (12, 12, 1),
        "unit",
    ),
    "small_cnn/white": (
        ["model=small_cnn"],
        ["mining=batch_hard"],
        12,
        3,
        "float32",
        (8, 8, 1),
        "white",
    ),
    "small_cnn/ten": (
        ["model=small_cnn"],
        ["mining=batch_hard"],
        12,
        3,
        "float32",
        (8, 8, 1),
        "ten",
    ),
    "vgg_gap/ten": (["model=vgg_gap"], ["mining=batch_hard"], 12, 2, "float32", (8, 8, 1), "ten"),
}


def main(replicas: int, names: list[str]) -> None:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    from tests.helpers import compose
    from tripletlab.distribute import configure_cpu_devices, distribute_batches
    from tripletlab.models import FusedBatchNorm, build_model
    from tripletlab.training.memory import CrossBatchMemory
    from tripletlab.training.steps import make_train_step

    devices = configure_cpu_devices(replicas)
    strategies = {
        "one": tf.distribute.get_strategy(),
        "many": tf.distribute.MirroredStrategy(devices),
    }
    tf.config.experimental.enable_op_determinism()
    out = {}
    for name in names:
        model_o, mining_o, batch, steps, precision, shape, pixels = VARIANTS[name]
        channels = [] if "lenet" in model_o[0] else ["model.num_channels=4"]
        cfg = compose(["dataset=digits", "model.embedding_size=8", *model_o, *mining_o, *channels])
        rng = np.random.default_rng(1)
        xs = rng.random((steps, batch, *shape)).astype("float32")
        xs = {"unit": xs, "white": 0.95 + 0.05 * xs, "ten": 10.0 + 0.1 * xs}[pixels]
        xs = xs.astype("float32")
        classes = np.repeat(np.arange(batch // 3), 3)
        ys = np.stack([rng.permutation(classes) for _ in range(steps)]).astype("int32")
        runs = {}
        for label, distribution in strategies.items():
            keras.mixed_precision.set_global_policy(precision)
            keras.utils.set_random_seed(3)
            with distribution.scope():
                model = build_model(cfg.model, shape, 0.0)
                optimizer = keras.optimizers.Adam(1e-2)
                optimizer.build(model.trainable_variables)
                memory = None
                if cfg.mining.memory_size:
                    memory = CrossBatchMemory(cfg.mining.memory_size, cfg.model.embedding_size)
            step = make_train_step(
                model, optimizer, cfg.mining, distribution=distribution, memory=memory, seed=5
            )
            losses = []
            for s in range(steps):
                x, y = xs[s], ys[s]
                data = distribute_batches(
                    distribution, lambda x=x, y=y: tf.data.Dataset.from_tensors((x, y)), batch
                )
                losses.append(float(step(*next(iter(data)))[0]))
            statistics = [
                np.asarray(v.numpy(), np.float64)
                for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, FusedBatchNorm)
                for v in (layer.moving_mean, layer.moving_variance)
            ]
            runs[label] = (losses, statistics)
        keras.mixed_precision.set_global_policy("float32")
        (one, s1), (many, s2) = runs["one"], runs["many"]
        out[name] = {
            "losses": one,
            "loss": float(np.max(np.abs(np.array(one) - np.array(many)))),
            "statistics": len(s1),
            "statistic": max(
                [
                    float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))
                    for a, b in zip(s1, s2, strict=True)
                ]
                or [0.0]
            ),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
