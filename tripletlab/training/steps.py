"""The compiled train step: forward, the configured triplet loss over the global batch,
backward, running means. One code path for one device and for several replicas (tf.distribute)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tripletlab")

RUNNING_MEANS = ("loss", "fraction", "norm", "spread")


def make_running_means() -> dict[str, Any]:
    """keras.metrics.Mean objects keyed as :data:`RUNNING_MEANS`, updated inside the step."""
    import keras

    return {k: keras.metrics.Mean(name=k) for k in RUNNING_MEANS}


def make_train_step(
    model,
    optimizer,
    mining,
    scales_loss: bool = False,
    jit_compile: bool = False,
    means: dict | None = None,
    distribution=None,
    memory=None,
    seed: int = 0,
):
    """A ``tf.function`` train_step(images, labels) -> (loss, fraction, norm, spread).

    images [b, H, W, C] and labels [b] are one replica's slice of the global batch (under a
    distribution: per-replica values from a distributed dataset; else the whole batch). The four
    results are float32 scalars of the *global* batch: the loss and fraction of ``mining``
    (strategy, margin, squared, soft_margin) mined over all replicas' embeddings
    (:func:`tripletlab.distribute.global_batch_loss`), the mean embedding norm, and the mean
    distance to the centroid (near zero when the embeddings collapse). The gradient that
    reaches the weights is the single-device gradient of that loss on that batch.
    ``scales_loss``: float16 mixed precision (a LossScaleOptimizer). ``means``: from
    :func:`make_running_means`, updated inside the step. ``memory``: a
    :class:`~tripletlab.training.memory.CrossBatchMemory` (mined with the global batch, then
    filled with it), or None. ``seed``: with the step number, the per-step seed of a
    strategy that asks for one (its entry's ``step_inputs``), so a resumed run draws what
    an uninterrupted one would.
    """
    import tensorflow as tf

    from tripletlab.distribute import gather_global_batch
    from tripletlab.losses.strategies import checked, unconnected
    from tripletlab.models import synchronizes_batch_norm
    from tripletlab.registry import STRATEGIES

    entry = STRATEGIES.option(mining.strategy)
    loss_fn = STRATEGIES.get(entry.name)
    options = {key: getattr(mining, key) for key in STRATEGIES.own_keys(entry.name)}
    if "seed" in entry.step_inputs:
        step = optimizer.iterations  # a Keras variable: cast before stacking
        options["seed"] = lambda: tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])

    distribution = distribution or tf.distribute.get_strategy()
    replicas = distribution.num_replicas_in_sync

    def forward(images):
        return model(images, training=True)

    def mine(labels, embeddings, memory_labels, memory_embeddings, step_options):
        # checked while traced: a plugin's per-anchor loss [B] (whose sum the gradient would
        # silently follow) or int loss is one ConfigError naming it, before the first step
        result = loss_fn(
            labels,
            embeddings,
            margin=mining.margin,
            squared=mining.squared,
            soft_margin=mining.soft_margin,
            jit_compile=jit_compile,  # the mining engine must be one XLA can compile
            memory=None if memory is None else (memory_labels, memory_embeddings),
            **step_options,
        )
        return checked(entry.name, result, tf.float32)

    if jit_compile:
        # XLA compiles the model and the loss, each a nested function; the collectives stay
        # outside (a nested function may hold no synchronisation point, and XLA has no CPU
        # kernel for them): the all-gather between the two, and under several replicas each
        # batch norm's collective for the global batch's moments, which keeps the model out.
        if replicas == 1 or not synchronizes_batch_norm(model):
            forward = tf.function(forward, jit_compile=True)
        else:
            log.info("XLA compiles the loss only: the model's batch norm syncs the replicas")
        mine = tf.function(mine, jit_compile=True)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            labels_all, embeddings = gather_global_batch(labels, forward(images))
            step_options = {k: v() if callable(v) else v for k, v in options.items()}
            # Without a memory, empty stand-ins: mine's signature stays one.
            memory_labels, memory_embeddings = (
                memory.contents(tf.cast(optimizer.iterations, tf.int64))
                if memory is not None
                else (labels_all[:0], embeddings[:0])
            )
            loss, fraction = mine(
                labels_all, embeddings, memory_labels, memory_embeddings, step_options
            )
            total = loss
            if model.losses:
                total = total + tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
            # Every replica holds the same global loss; the all-gather's gradient and the
            # optimizer each sum over replicas, so 1/N makes the sum the exact gradient.
            total = total / replicas
            scaled = optimizer.scale_loss(total) if scales_loss else total
        # the embeddings' gradient too: None (known while traced) if the loss is not a
        # function of them; it is on the way to the weights', so it costs nothing more
        *grads, through = tape.gradient(scaled, [*model.trainable_variables, embeddings])
        if through is None:
            raise unconnected(entry.name)
        optimizer.apply(grads, model.trainable_variables)
        if memory is not None:  # after mining: the memory holds earlier steps only
            memory.enqueue(labels_all, embeddings)
        norm = tf.reduce_mean(tf.norm(embeddings, axis=1))
        spread = tf.reduce_mean(tf.norm(embeddings - tf.reduce_mean(embeddings, axis=0), axis=1))
        return loss, fraction, norm, spread

    def train_step(images, labels):
        per_replica = distribution.run(replica_step, args=(images, labels))
        # Global values: the same on every replica, so the first one's.
        values = [distribution.experimental_local_results(v)[0] for v in per_replica]
        if means is not None:
            for key, value in zip(RUNNING_MEANS, values, strict=True):
                means[key].update_state(value)
        return tuple(values)

    return tf.function(train_step)
