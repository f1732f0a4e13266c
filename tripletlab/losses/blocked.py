"""Batch-all and semi-hard in blocks of anchors: O(B D + R N) memory instead of O(B N).

The dense forms (:mod:`tripletlab.losses.strategies`) hold [B, N] matrices (distances,
masks, coefficients, their gradient): ~64 MB each at B = N = 4096 in float32. But the
mining engines work row by row: an anchor's result depends only on its own row of d, the
column labels and its own column (``Blocks.own``). So beyond ``engines.DENSE_ELEMENTS``
distances the anchors run in blocks of R = ``engines.mining_block_rows(B, N)`` rows in a
``tf.while_loop``, the last block shorter; below, in one block of all B rows, because the
gradient written by hand here is faster than autodiff through the dense form (the rule is
:func:`tripletlab.losses.engines.mining_form`; the dense form runs under XLA):

1. prepare (once): the columns c [N, D] (the batch, then the memory: no gradient), their
   labels [N] and squared norms [N]; the class blocks of the B anchors (O(N)).
2. distances (per block): d [R, N] from the block's anchors e [R, D] and c, the formula of
   :func:`tripletlab.losses.distances.pairwise_distances` (the anchor's own column exactly
   0), and d d / d d2 [R, N].
3. mine (per block): the engine's sum of items [], their count [] int64 and G = d sum / d d
   [R, N], for the block's rows only (``engines.choose``: slots or buckets, as dense).
4. gradient (per block): H = G d d / d d2 through d2(a, c) = |e_a|^2 + |c|^2 - 2 e_a . c:
   the anchors get 2 (rowsum(H) e - H c) [R, D], the batch's columns 2 (colsum(H) c - H^T e)
   [B, D], summed over the blocks (O(B D)).
5. reduce: the sums and counts give loss and fraction as in the dense form; the gradient
   (times upstream / count) is attached with ``pieces.with_gradient``.

The gradient is computed in the forward pass, as the dense forms do: training always asks
for it, and recomputing it in the backward pass would mine every block a second time. The
backward pass is one multiply; nothing [B, N] is kept for it.
"""

from __future__ import annotations

import tensorflow as tf

from tripletlab.losses import engines, native
from tripletlab.losses.distances import (
    masked_sqrt,
    prepare,
    unclamped_squared,
    with_memory_labels,
)
from tripletlab.losses.pieces import (
    class_blocks,
    nan_unless_finite,
    ratio,
    with_gradient,
)
from tripletlab.losses.sampling import (
    check_unit_norm,
    distance_weights,
    drawn_items,
    negative_uniforms,
    unit_norm_tolerance,
)

# Blocks in flight in the loop. Two (the loop's own temporaries twice) took batch-all and
# semi-hard to 11.5-12 MB at B = 4096 (P x 4, float32), 1.7x batch-hard's; one: 6-8.5 MB.
# The time difference was within the noise of the shared 2-core machine.
BLOCKS_IN_FLIGHT = 1


def _columns(labels, embeddings, memory):
    """Stage 1: (anchor labels [B], embeddings [B, D], column labels [N], columns [N, D])."""
    labels, embeddings = prepare(labels, embeddings)
    if memory is None:
        return labels, embeddings, labels, embeddings
    labels, column_labels = with_memory_labels(labels, memory[0])
    memory_embeddings = tf.stop_gradient(tf.cast(memory[1], embeddings.dtype))
    columns = tf.concat([embeddings, memory_embeddings], axis=0)
    return labels, embeddings, column_labels, columns


def _distances(anchors, columns, norms, start, squared):
    """Stage 2: anchors [R, D] (rows start .. start + R - 1), columns [N, D], their squared
    norms [N] -> (d [R, N], where d2 took the gradient [R, N] bool, or None). As the dense
    form: d2 clamped at 0 (no gradient where the clamp acts), d = 0 (gradient 0) where d2 = 0.
    A column equal to the anchor (its own, a duplicate) gets d2 exactly 0, as in the dense form."""
    raw = unclamped_squared(anchors, columns, norms, start)  # as the dense form's
    d2 = tf.maximum(raw, 0.0)
    if squared:
        return d2, raw >= 0
    return masked_sqrt(d2), None


def _chain(g, d, passes):
    """G = d sum / d d [R, N] -> d sum / d d2 [R, N], times 2 (the 2 of d d2 / d e): squared,
    2 G where the clamp let the gradient through; else G / d (d d / d d2 = 1 / 2d), 0 at d = 0."""
    if passes is not None:
        return tf.where(passes, 2 * g, tf.zeros([], g.dtype))
    return tf.math.divide_no_nan(g, d)


def _blocks_of_rows(embeddings, columns, blocks, squared, mine_rows, count_shape=()):
    """Stages 2-4: embeddings [B, D], columns [N, D] (the first B: the embeddings), the class
    blocks of the B anchors, ``mine_rows(d [R, N], blocks.rows(...))`` -> (sum [], counts
    int64 of ``count_shape``, G [R, N]) -> (total sum [], total counts, d sum / d
    embeddings [B, D])."""
    # rank 2 (the strategies accept embeddings of unknown rank): loop shapes stay fixed
    e = tf.ensure_shape(tf.stop_gradient(embeddings), [None, None])
    c = tf.ensure_shape(tf.stop_gradient(columns), [None, None])
    b, n = tf.shape(e)[0], tf.shape(c)[0]
    norms = tf.reduce_sum(c * c, axis=1)  # [N]
    rows = tf.maximum(engines.mining_block_rows(b, n), 1)  # B = 0 (a memory only): no blocks
    n_blocks = (b + rows - 1) // rows
    has_memory = columns is not embeddings  # static; the memory's columns get no gradient

    def body(i, total, count, column_weight, column_pull, anchor_grads):
        start = i * rows
        stop = tf.minimum(start + rows, b)
        anchors = e[start:stop]
        d, passes = _distances(anchors, c, norms, start, squared)
        block_total, block_count, g = mine_rows(d, blocks.rows(start, stop))
        h = _chain(g, d, passes)  # 2 d sum / d d2 [R, N]
        own = tf.reduce_sum(h, axis=1, keepdims=True) * anchors - tf.matmul(h, c)  # [R, D]
        h_batch = h[:, :b] if has_memory else h
        column_weight += tf.reduce_sum(h_batch, axis=0)  # [B]
        column_pull += tf.matmul(h_batch, anchors, transpose_a=True)  # [B, D]
        anchor_grads = anchor_grads.write(i, own)
        total, count = total + block_total, count + block_count
        return i + 1, total, count, column_weight, column_pull, anchor_grads

    init = (
        tf.constant(0),
        tf.zeros([], e.dtype),
        tf.zeros(count_shape, tf.int64),
        tf.zeros([b], e.dtype),
        tf.zeros_like(e),
        tf.TensorArray(e.dtype, size=n_blocks, infer_shape=False),
    )
    _, total, count, weight, pull, anchor_grads = tf.while_loop(
        lambda i, *_: i < n_blocks, body, init, parallel_iterations=BLOCKS_IN_FLIGHT
    )
    # no block (B = 0, a memory only): a TensorArray of no elements cannot concat
    own = tf.cond(n_blocks > 0, anchor_grads.concat, lambda: tf.zeros_like(e))
    grad = tf.reshape(own, tf.shape(e)) + weight[:, None] * e - pull
    return total, count, grad


def batch_all(labels, embeddings, margin, squared, soft_margin, memory, engine, jit_compile):
    """Blocked batch-all: the contract of ``strategies.batch_all_triplet_loss``."""
    labels, e, column_labels, columns = _columns(labels, embeddings, memory)
    dtype, b = e.dtype, tf.shape(labels)[0]
    margin = tf.cast(margin, dtype)

    def mine_rows(d, blocks):  # 3. mine: (sum of the items, count, d sum / d d)
        if soft_margin:  # softplus is not linear in d: the slot loop gives its gradient
            return engines.soft_batch_all_slots(d, column_labels, blocks)

        def run(name):
            if name == "slots":
                return engines.batch_all_slots(d, column_labels, margin, blocks)
            if name == "native":
                return native.batch_all(d, margin, blocks)
            return engines.batch_all_buckets(d, margin, blocks)

        w, count = engines.choose("batch_all", all_blocks, engine, jit_compile, run, dtype)
        total = tf.tensordot(tf.reshape(w, [-1]), tf.reshape(d, [-1]), 1)
        return total + margin * tf.cast(count, dtype), count, w

    all_blocks = class_blocks(column_labels, b)
    n_neg = tf.shape(column_labels)[0] - all_blocks.n_pos - 1
    n_valid = tf.reduce_sum(tf.cast(all_blocks.n_pos, tf.int64) * tf.cast(n_neg, tf.int64))
    total, count, grad = _blocks_of_rows(e, columns, all_blocks, squared, mine_rows)
    # 5. reduce: hinge, the mean of the positive hinges (count of them); soft: over all valid
    denominator = n_valid if soft_margin else count
    scale = 1 / tf.cast(tf.maximum(denominator, 1), dtype)
    loss = with_gradient(e, ratio(total, denominator, dtype), grad, scale)
    return nan_unless_finite(columns, loss, ratio(count, n_valid, dtype))


def semi_hard(labels, embeddings, margin, squared, soft_margin, memory, engine, jit_compile):
    """Blocked semi-hard: the contract of ``strategies.semi_hard_triplet_loss``."""
    labels, e, column_labels, columns = _columns(labels, embeddings, memory)
    dtype, b = e.dtype, tf.shape(labels)[0]
    margin = tf.cast(margin, dtype)
    all_blocks = class_blocks(column_labels, b)

    def mine_rows(d, blocks):  # 3. mine: (sum of the items, number active, d sum / d d)
        def run(name):
            if name == "slots":
                return engines.semi_hard_slots(d, column_labels, margin, soft_margin, blocks)
            if name == "native":
                return native.semi_hard(d, margin, soft_margin, blocks)
            return engines.semi_hard_buckets(d, column_labels, margin, soft_margin, blocks)

        return engines.choose("semi_hard", all_blocks, engine, jit_compile, run, dtype)

    total, n_active, grad = _blocks_of_rows(e, columns, all_blocks, squared, mine_rows)
    # 5. reduce: the mean over pairs whose anchor has a negative
    has_neg = all_blocks.n_pos + 1 < tf.shape(column_labels)[0]
    n_pairs = tf.reduce_sum(tf.where(has_neg, tf.cast(all_blocks.n_pos, tf.int64), 0))
    scale = 1 / tf.cast(tf.maximum(n_pairs, 1), dtype)
    loss = with_gradient(e, ratio(total, n_pairs, dtype), grad, scale)
    return nan_unless_finite(columns, loss, ratio(n_active, n_pairs, dtype))


def distance_weighted(
    labels, embeddings, margin, soft_margin, cutoff, nonzero_cutoff, seed, memory
):
    """Blocked distance-weighted: the contract of ``strategies.distance_weighted_triplet_loss``.
    The uniforms of every (anchor, slot) are drawn first ([B, S]: row a's depend only on the
    seed and a), so each block draws what the dense form draws."""
    labels, e, column_labels, columns = _columns(labels, embeddings, memory)
    dtype, b = e.dtype, tf.shape(labels)[0]
    all_blocks = class_blocks(column_labels, b)
    slots = tf.maximum(tf.reduce_max(all_blocks.n_pos), 1)
    uniforms = negative_uniforms(b, slots, seed)
    dim = tf.shape(e)[1]

    def mine_rows(d, blocks):  # 3. mine: the weights, the draws, the items over them
        row_labels = tf.gather(column_labels, blocks.own)
        log_weights = distance_weights(d, row_labels, column_labels, dim, cutoff, nonzero_cutoff)
        row_uniforms = tf.gather(uniforms, blocks.own)
        return drawn_items(d, log_weights, row_uniforms, blocks, slots, margin, soft_margin)

    tolerance = unit_norm_tolerance(embeddings)
    with tf.control_dependencies(check_unit_norm(e, tolerance)):  # eager: raises here
        total, counts, grad = _blocks_of_rows(e, columns, all_blocks, False, mine_rows, (2,))
    # 5. reduce: the mean over the drawn triplets
    count, n_active = counts[0], counts[1]
    scale = 1 / tf.cast(tf.maximum(count, 1), dtype)
    loss = with_gradient(e, ratio(total, count, dtype), grad, scale)
    return nan_unless_finite(columns, loss, ratio(n_active, count, dtype))
