"""The mining strategies: each a short function of labelled stages (prepare, distances, mine,
reduce), registered in :data:`tripletlab.registry.LOSSES` under its ``mining.strategy`` name.

Every strategy takes ``labels`` [B] and ``embeddings`` [B, D] and returns ``(loss,
fraction)``, two scalars, and these keyword arguments:

* ``margin``, ``squared``, ``soft_margin``: the hinge h = max(d_ap - d_an + margin, 0), or
  softplus(d_ap - d_an) with the soft margin (the margin is then ignored);
* ``memory``: None, or ``(labels [M], embeddings [M, D])`` of earlier batches (cross-batch
  memory, no gradient). Anchors are the batch; positives and negatives come from the batch
  and the memory together. The distance matrix is [B, B + M], never [B + M, B + M];
* ``engine`` ("auto", "slots", "buckets", "sorted") and ``jit_compile`` (whether the caller
  compiles with XLA): which exact engine of :mod:`tripletlab.losses.engines` mines (only
  batch-all and semi-hard have several; all give the same numbers).

float16 / bfloat16 embeddings are computed in float32; float64 stays float64. When nothing
is counted, loss and fraction are 0 (never NaN); when an embedding is NaN or inf, both are
NaN. Gradients are exact and first-order: each strategy computes d loss / d distances in
the forward pass and attaches it (``with_gradient``).
"""

from __future__ import annotations

import tensorflow as tf

from tripletlab.losses import engines
from tripletlab.losses.distances import pairwise_distances, prepare
from tripletlab.losses.pieces import (
    class_blocks,
    masks,
    mean_of_picks,
    nan_unless_finite,
    ratio,
    with_gradient,
)
from tripletlab.registry import LOSSES


def _columns(labels, embeddings, squared, memory):
    """Stages 1-2: (anchor labels [B], column labels [N], embeddings [B, D], d [B, N],
    every embedding that must be finite), N = B + M."""
    labels, embeddings = prepare(labels, embeddings)
    column_labels, memory_embeddings, checked = labels, None, embeddings
    if memory is not None:
        memory_labels, memory_embeddings = memory
        memory_labels = tf.cast(tf.reshape(memory_labels, [-1]), labels.dtype)
        column_labels = tf.concat([labels, memory_labels], axis=0)
        memory_embeddings = tf.cast(memory_embeddings, embeddings.dtype)
        checked = tf.concat([embeddings, tf.stop_gradient(memory_embeddings)], axis=0)
    d = pairwise_distances(embeddings, squared, memory=memory_embeddings)
    return labels, column_labels, embeddings, d, checked


@LOSSES.register("batch_all")
def batch_all_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Batch-all: every valid triplet (a != p, y_a = y_p, y_n != y_a).

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Hinge: mean of the
    positive hinges, fraction = positive hinges / valid triplets. Soft margin: mean
    softplus(d_ap - d_an) over valid triplets, fraction = share with d_ap > d_an. Memory
    O(B N); time O(B N log N) at most for the hinge, O(B N S) for the soft margin (S =
    largest class size - 1).
    """
    engines.check_engine(engine, jit_compile)
    # 1-2. distances [B, N]
    labels, column_labels, embeddings, d, checked = _columns(labels, embeddings, squared, memory)
    dtype, b = d.dtype, tf.shape(labels)[0]
    d_const = tf.stop_gradient(d)
    blocks = class_blocks(column_labels, b)
    n_neg = tf.shape(column_labels)[0] - blocks.n_pos - 1
    n_valid = tf.reduce_sum(tf.cast(blocks.n_pos, tf.int64) * tf.cast(n_neg, tf.int64))

    if soft_margin:  # 3-4. mine and reduce in one loop: softplus is not linear in d
        total, n_violating, grad = engines.soft_batch_all_slots(d_const, column_labels, blocks)
        scale = 1 / tf.cast(tf.maximum(n_valid, 1), dtype)
        loss = with_gradient(d, ratio(total, n_valid, dtype), grad, scale)
        return nan_unless_finite(checked, loss, ratio(n_violating, n_valid, dtype))

    # 3. mine: integer coefficients w [B, N] and the count of positive hinges
    margin = tf.cast(margin, dtype)

    def run(name):
        if name == "slots":
            return engines.batch_all_slots(d_const, column_labels, margin, blocks)
        if name == "sorted":
            return engines.batch_all_sorted(d_const, column_labels, margin)
        return engines.batch_all_buckets(d_const, margin, blocks)

    w, count = engines.choose("batch_all", blocks, engine, jit_compile, run)
    # 4. reduce: a flat dot product, no [B, N] temporary for w * d. The gradient w.r.t. d
    # is w / count, attached directly: the tape's gradient of the dot product is a slow
    # outer product.
    total = tf.tensordot(tf.reshape(w, [-1]), tf.reshape(d_const, [-1]), 1)
    total += margin * tf.cast(count, dtype)
    scale = 1 / tf.cast(tf.maximum(count, 1), dtype)
    loss = with_gradient(d, ratio(total, count, dtype), w, scale)
    return nan_unless_finite(checked, loss, ratio(count, n_valid, dtype))


@LOSSES.register("batch_hard")
def batch_hard_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Batch-hard: per anchor, its farthest positive and nearest negative.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Mean over anchors that
    have a positive and a negative; fraction = share of them with h > 0 (soft margin: with
    d_ap > d_an). O(B N) time and memory; one engine (``engine`` is only checked).
    """
    engines.check_engine(engine, jit_compile)
    # 1-2. distances [B, N]
    labels, column_labels, _, d, checked = _columns(labels, embeddings, squared, memory)
    d_const = tf.stop_gradient(d)
    # 3. mine. Indices, not reduce_max / reduce_min: the gradient goes to one element even
    # when distances tie. Fill values outside the masks cannot tie with a distance (d >= 0).
    pos, neg = masks(column_labels, tf.shape(labels)[0])
    valid = tf.logical_and(tf.reduce_any(pos, axis=1), tf.reduce_any(neg, axis=1))
    far_pos = tf.argmax(tf.where(pos, d_const, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    inf = tf.constant(float("inf"), d.dtype)
    near_neg = tf.argmin(tf.where(neg, d_const, inf), axis=1, output_type=tf.int32)
    # 4. reduce
    loss, fraction = mean_of_picks(d, d_const, valid, far_pos, near_neg, margin, soft_margin)
    return nan_unless_finite(checked, loss, fraction)


@LOSSES.register("semi_hard")
def semi_hard_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Semi-hard (FaceNet): per valid pair, the nearest negative farther than p.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). For each (a, p) with
    a != p, y_a = y_p, and a having a negative: the negative with the smallest d_an > d_ap,
    else the farthest negative. Mean over those pairs; fraction = share with h > 0 (soft
    margin: d_ap > d_an). Memory O(B N); time O(B N min(S, log N)).
    """
    engines.check_engine(engine, jit_compile)
    # 1-2. distances [B, N]
    labels, column_labels, _, d, checked = _columns(labels, embeddings, squared, memory)
    dtype, b = d.dtype, tf.shape(labels)[0]
    d_const = tf.stop_gradient(d)
    blocks = class_blocks(column_labels, b)
    margin = tf.cast(margin, dtype)

    # 3. mine: (sum of the items, number active, d sum / d d [B, N])
    def run(name):
        if name == "slots":
            return engines.semi_hard_slots(d_const, column_labels, margin, soft_margin, blocks)
        if name == "sorted":
            return engines.semi_hard_sorted(d_const, column_labels, margin, soft_margin)
        return engines.semi_hard_buckets(d_const, column_labels, margin, soft_margin, blocks)

    total, n_active, grad = engines.choose("semi_hard", blocks, engine, jit_compile, run)
    # 4. reduce: the mean over pairs whose anchor has a negative
    has_neg = blocks.n_pos + 1 < tf.shape(column_labels)[0]
    n_pairs = tf.reduce_sum(tf.where(has_neg, tf.cast(blocks.n_pos, tf.int64), 0))
    scale = 1 / tf.cast(tf.maximum(n_pairs, 1), dtype)
    loss = with_gradient(d, ratio(total, n_pairs, dtype), grad, scale)
    return nan_unless_finite(checked, loss, ratio(n_active, n_pairs, dtype))


def get(name):
    """The strategy function registered as ``name`` (ConfigError naming the valid ones)."""
    return LOSSES.get(name)


def triplet_loss(
    labels,
    embeddings,
    strategy="semi_hard",
    margin=0.5,
    squared=False,
    soft_margin=False,
    **options,
):
    """Dispatch to the loss of ``strategy`` (a name in LOSSES) -> (loss [], fraction []).
    ``options``: the strategy's keyword arguments (memory, engine, jit_compile, ...)."""
    loss = get(strategy)
    return loss(
        labels, embeddings, margin=margin, squared=squared, soft_margin=soft_margin, **options
    )
