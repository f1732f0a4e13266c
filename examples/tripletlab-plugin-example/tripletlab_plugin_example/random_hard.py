"""``mining=random_hard``: per anchor, a random positive with the hardest (nearest)
negative: the baseline "batch hard with a random positive" of Hermans, Beyer and Leibe,
"In Defense of the Triplet Loss for Person Re-Identification", 2017.

The "random" positive is the one with the highest score h(seed, anchor, column), an
integer hash that numpy reproduces exactly: the brute force (:func:`picks`) picks the same
positive as the TensorFlow code for the same seed, and a resumed run draws what an
uninterrupted one would (the train step passes (config seed, step) as ``seed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tripletlab.errors import ConfigError
from tripletlab.options.mining import MiningConfig
from tripletlab.registry import Strategy

PRIME = 2147483647  # 2^31 - 1


@dataclass
class RandomHardConfig(MiningConfig):
    """A random positive, the hardest negative (no keys of its own but the name)."""

    strategy: str = "random_hard"

    def check(self, cfg: Any) -> None:
        if self.squared and not self.soft_margin and self.margin > 4:
            raise ConfigError("mining=random_hard: a margin above 4 is never met on unit vectors")


def _seed_number(seed: Any) -> int:
    s = (0, 0) if seed is None else tuple(int(v) for v in np.asarray(seed).reshape(-1))
    return (s[0] * 1000003 + s[1]) % PRIME


def scores(n_rows: int, n_cols: int, seed: Any) -> np.ndarray:
    """The hash h [n_rows, n_cols] int64 in numpy (the brute force's)."""
    s = _seed_number(seed)
    a = (np.arange(n_rows, dtype=np.int64)[:, None] + 1) * 73856093
    j = (np.arange(n_cols, dtype=np.int64)[None, :] + 1) * 19349663
    return (a ^ j ^ (s * 83492791)) % PRIME


def random_hard_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    seed=None,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """labels [B] int, embeddings [B, D] float -> (loss [], fraction []): the mean hinge
    (soft margin: softplus) over anchors with a positive and a negative; fraction = share
    of them with h > 0. ``seed``: None or int [2] (config seed, step). O(B^2) time and
    memory; no cross-batch memory (its entry does not ask for one)."""
    import tensorflow as tf

    from tripletlab.losses import pairwise_distances

    if memory is not None:
        raise ValueError("random_hard mines no cross-batch memory")
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    embeddings = tf.convert_to_tensor(embeddings)
    if embeddings.dtype in (tf.float16, tf.bfloat16):
        embeddings = tf.cast(embeddings, tf.float32)
    d = pairwise_distances(embeddings, squared)  # [B, B]
    b = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    pos = tf.logical_and(same, tf.logical_not(tf.eye(b, dtype=tf.bool)))
    neg = tf.logical_not(same)
    valid = tf.logical_and(tf.reduce_any(pos, axis=1), tf.reduce_any(neg, axis=1))
    # The positive: the highest hash among the anchor's positives (as scores() in numpy).
    if seed is None:
        s = tf.constant(0, tf.int64)
    else:
        seed = tf.cast(tf.reshape(seed, [-1]), tf.int64)
        s = (seed[0] * 1000003 + seed[1]) % PRIME
    rows = (tf.range(b, dtype=tf.int64)[:, None] + 1) * 73856093
    cols = (tf.range(b, dtype=tf.int64)[None, :] + 1) * 19349663
    h = tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(rows, cols), s * 83492791) % PRIME
    p = tf.argmax(tf.where(pos, h, tf.constant(-1, tf.int64)), axis=1, output_type=tf.int32)
    d_const = tf.stop_gradient(d)
    inf = tf.constant(float("inf"), d.dtype)
    n = tf.argmin(tf.where(neg, d_const, inf), axis=1, output_type=tf.int32)
    x = tf.gather(d, p, batch_dims=1) - tf.gather(d, n, batch_dims=1)  # [B], with gradient
    values = tf.nn.softplus(x) if soft_margin else tf.nn.relu(x + margin)
    active = x > 0 if soft_margin else x + margin > 0
    count = tf.reduce_sum(tf.cast(valid, d.dtype))
    zero = tf.zeros_like(values)
    loss = tf.reduce_sum(tf.where(valid, values, zero)) / tf.maximum(count, 1)
    fraction = tf.reduce_sum(tf.cast(valid & active, d.dtype)) / tf.maximum(count, 1)
    return loss, fraction


def picks(d, y, cy, seed=None):
    """The brute force: per anchor a with a positive and a negative, (a, its positive with
    the highest hash, its nearest negative, lowest column on ties)."""
    h = scores(len(y), len(cy), seed)
    out = []
    for a in range(len(y)):
        positives = [j for j in range(len(cy)) if j != a and cy[j] == y[a]]
        negatives = [j for j in range(len(cy)) if cy[j] != y[a]]
        if positives and negatives:
            p = max(positives, key=lambda j: (h[a, j], -j))
            out.append((a, p, min(negatives, key=lambda j: (d[a, j], j))))
    return out


STRATEGY = Strategy(
    "random_hard",
    RandomHardConfig,
    target=random_hard_triplet_loss,
    step_inputs=("seed",),
    reference=picks,
)
