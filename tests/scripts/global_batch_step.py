"""Run by tests/test_distribute.py in a fresh process (logical devices are set per process).

``python global_batch_step.py N`` prints JSON: for each mining strategy, with and without
the soft margin, the loss and the weights after one SGD step (learning rate 1, so the change
is minus the gradient) of tripletlab's train step on N replicas; N = 1 is one device; and
the same for batch-hard with weight decay (key "batch_hard/hard/decay"). Also,
for a batch whose local and global mining differ, the global loss and the mean local loss.
"""

import json
import sys

import numpy as np

WEIGHT_DECAY = 0.05  # the L2 factor of the weight-decay case


def main(replicas: int) -> None:
    import keras
    import tensorflow as tf

    from tripletlab.distribute import configure_cpu_devices, distribute_batches
    from tripletlab.losses import triplet_loss
    from tripletlab.training.steps import make_train_step

    devices = configure_cpu_devices(max(replicas, 1))
    distribution = (
        tf.distribute.MirroredStrategy(devices[:replicas])
        if replicas > 1
        else tf.distribute.get_strategy()
    )
    rng = np.random.default_rng(0)
    batch = 16
    x = rng.normal(size=(batch, 6)).astype("float32")
    y = np.repeat(np.arange(4), 4).astype("int32")
    rng.shuffle(y)

    out = {}
    cases = [(m, soft, 0.0) for m in ("batch_all", "batch_hard", "semi_hard") for soft in (0, 1)]
    cases.append(("batch_hard", False, WEIGHT_DECAY))  # L2 on both kernels, model.losses
    for mining, soft, decay in cases:
        keras.utils.set_random_seed(3)
        reg = keras.regularizers.L2(decay) if decay else None
        with distribution.scope():
            model = keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(8, activation="tanh", kernel_regularizer=reg),
                    keras.layers.Dense(5, kernel_regularizer=reg),
                ]
            )
            optimizer = keras.optimizers.SGD(learning_rate=1.0)
            optimizer.build(model.trainable_variables)
        initial = [w.numpy().tolist() for w in model.trainable_variables]
        cfg = type("Mining", (), {"strategy": mining, "margin": 0.2, "squared": False})()
        cfg.soft_margin = bool(soft)
        step = make_train_step(model, optimizer, cfg, distribution=distribution)
        data = distribute_batches(distribution, lambda: tf.data.Dataset.from_tensors((x, y)), batch)
        images, labels = next(iter(data))
        loss = float(step(images, labels)[0])
        weights = [w.numpy().tolist() for w in model.trainable_variables]
        key = f"{mining}/{'soft' if soft else 'hard'}" + ("/decay" if decay else "")
        out[key] = {"loss": loss, "weights": weights, "initial": initial}

    # Replica 0 holds two classes, replica 1 the two others: locally every negative of an
    # anchor comes from one class only, globally from three.
    emb = rng.normal(size=(8, 3)).astype("float32")
    lab = np.array([0, 0, 1, 1, 2, 2, 3, 3], "int32")
    local = [
        float(triplet_loss(lab[i : i + 4], emb[i : i + 4], strategy="batch_hard", margin=0.2)[0])
        for i in (0, 4)
    ]
    glob = float(triplet_loss(lab, emb, strategy="batch_hard", margin=0.2)[0])
    if replicas > 1:
        data = distribute_batches(distribution, lambda: tf.data.Dataset.from_tensors((emb, lab)), 8)
        e, labels = next(iter(data))
        from tripletlab.distribute import global_batch_loss

        def replica_loss(e, labels):
            return global_batch_loss(
                labels, e, lambda lab_, v: triplet_loss(lab_, v, strategy="batch_hard", margin=0.2)
            )[0]

        per_replica = distribution.run(tf.function(replica_loss), args=(e, labels))
        mirrored = [float(v) for v in distribution.experimental_local_results(per_replica)]
    else:
        mirrored = [glob]
    out["mining"] = {"global": glob, "local_mean": float(np.mean(local)), "mirrored": mirrored}

    # Batch norm's moving mean after one step where replica r sees only the value 4 r: every
    # replica's copy must hold the average (momentum 0), not its own.
    from tripletlab.models import FusedBatchNorm

    with distribution.scope():
        bn = FusedBatchNorm(momentum=0.0)
        bn.build((None, 2, 2, 1))
    x_bn = np.concatenate([np.full((2, 2, 2, 1), 4.0 * r) for r in range(replicas)])
    data = distribute_batches(
        distribution,
        lambda: tf.data.Dataset.from_tensors((x_bn.astype("float32"), np.zeros(2 * replicas))),
        2 * replicas,
    )
    images, _ = next(iter(data))
    distribution.run(tf.function(lambda v: bn(v, training=True)), args=(images,))
    out["moving_mean"] = [
        float(v.numpy()[0]) for v in distribution.experimental_local_results(bn.moving_mean.value)
    ]
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
