"""The compiled train step: forward, the configured triplet loss, backward, running means."""

from __future__ import annotations

from typing import Any

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
):
    """A ``tf.function`` train_step(images [B,H,W,C], labels [B]) -> (loss, fraction, norm, spread).

    All four are float32 scalars: the loss and fraction of ``mining`` (strategy, margin,
    squared, soft_margin), the batch's mean embedding norm and its mean distance to the
    centroid (near zero when the embeddings collapse). ``scales_loss``: float16 mixed
    precision (a LossScaleOptimizer). ``means``: from :func:`make_running_means`, updated
    inside the step so the loop needs no per-step Python work but the call.
    """
    import tensorflow as tf

    from tripletlab.losses import triplet_loss

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            loss, fraction = triplet_loss(
                labels,
                embeddings,
                strategy=mining.strategy,
                margin=mining.margin,
                squared=mining.squared,
                soft_margin=mining.soft_margin,
            )
            total = loss
            if model.losses:
                total = total + tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
            scaled = optimizer.scale_loss(total) if scales_loss else total
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        emb = tf.cast(embeddings, tf.float32)
        norm = tf.reduce_mean(tf.norm(emb, axis=1))
        spread = tf.reduce_mean(tf.norm(emb - tf.reduce_mean(emb, axis=0), axis=1))
        if means is not None:
            values = {"loss": loss, "fraction": fraction, "norm": norm, "spread": spread}
            for key, value in values.items():
                means[key].update_state(value)
        return loss, fraction, norm, spread

    return tf.function(train_step, jit_compile=jit_compile)
