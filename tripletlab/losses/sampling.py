"""Distance-weighted sampling's pieces (Wu et al., ICCV 2017, "Sampling Matters"): the
weights of the negatives by distance on the unit sphere, the draws, and the items over the
drawn triplets. Both forms use them: the dense one (strategies.py, under XLA) and the
blocked one (blocked.py), which draw the same negatives for a seed."""

from __future__ import annotations

import tensorflow as tf

from tripletlab.losses.pieces import items, positive_columns, to_matrix


def distance_weights(d, anchor_labels, column_labels, dim, cutoff, nonzero_loss_cutoff):
    """Distance-weighted sampling's log-weights [B, N] (unnormalised; -inf: never drawn).

    d [B, N] euclidean distances between unit vectors in ``dim`` dimensions. Pairwise
    distances on the unit sphere have the density q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2)
    (Wu et al. 2017, section 4); a negative is drawn with probability ∝ min(λ, 1/q(d)),
    where the clip λ = 1/q(cutoff) is applied as q(max(d, cutoff)) (pytorch-metric-learning's
    ``cutoff``), and never beyond ``nonzero_loss_cutoff``, whose triplets have no loss. In
    log space: 1/q overflows float32 for D >= ~70.
    """
    n = tf.cast(dim, d.dtype)
    clipped = tf.maximum(d, tf.cast(cutoff, d.dtype))
    log_q = (n - 2.0) * tf.math.log(clipped) + (n - 3.0) / 2.0 * tf.math.log(
        1.0 - 0.25 * tf.square(clipped)
    )
    negative = tf.not_equal(anchor_labels[:, None], column_labels[None, :])
    allowed = negative & (d < tf.cast(nonzero_loss_cutoff, d.dtype)) & tf.math.is_finite(log_q)
    return tf.where(allowed, -log_q, tf.constant(-float("inf"), d.dtype))


def negative_uniforms(rows, samples, seed=None):
    """The uniforms [rows, samples] in [0, 1) that :func:`draw_negatives` turns into draws:
    row a's depend only on the seed, a and ``samples``, so the blocked form (a block of rows
    at a time) draws what the dense form draws. Not under XLA: there every column is a slot
    (static shapes) and XLA's generator gives other numbers, so a seed draws other negatives
    (from the same distribution). ``seed``: None (TensorFlow's stateful generator) or an
    int [2] tensor (stateless: the draws are a function of it)."""
    shape = tf.stack([rows, samples])
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed)


def draw_negatives(log_weights, uniforms):
    """One draw per uniform from each row's categorical ∝ exp(log_weights): log_weights
    [R, N], uniforms [R, S] -> (columns [R, S] int32, has_weight [R] bool). By the inverse
    of the row's cumulative distribution: the first column whose cumulative probability
    exceeds u, at most the row's last column of weight > 0 (u rounding up to the total must
    not land on a column of weight 0). Rows without weight draw column 0 (the caller leaves
    them out)."""
    has_weight = tf.reduce_any(log_weights > -float("inf"), axis=1)
    logits = tf.where(has_weight[:, None], log_weights, tf.zeros_like(log_weights))
    logits = tf.cast(logits, tf.float32) if logits.dtype != tf.float64 else logits
    cumulative = tf.cumsum(tf.nn.softmax(logits, axis=1), axis=1)  # [R, N]
    targets = tf.cast(uniforms, cumulative.dtype) * cumulative[:, -1:]  # total: 1 up to rounding
    drawn = tf.searchsorted(cumulative, targets, side="right", out_type=tf.int32)
    weighted = tf.reverse(log_weights > -float("inf"), axis=[1])
    last = tf.shape(log_weights)[1] - 1 - tf.argmax(weighted, axis=1, output_type=tf.int32)
    drawn = tf.minimum(drawn, last[:, None])
    return tf.where(has_weight[:, None], drawn, 0), has_weight


def unit_norm_tolerance(embeddings) -> float:
    """How far from 1 a row's norm may be, for embeddings as the caller gave them: 16-bit
    floats round a unit vector's norm by up to ~5e-3 (bfloat16) and ~6e-4 (float16)."""
    dtype = tf.convert_to_tensor(embeddings).dtype
    return {tf.bfloat16: 1e-2, tf.float16: 2e-3}.get(dtype, 1e-3)


def check_unit_norm(embeddings, tolerance=1e-3):
    """ValueError (eager) or an assertion (graph) unless every row has norm 1 (± tolerance)."""
    norms = tf.norm(embeddings, axis=1)
    message = (
        "distance_weighted needs L2-normalised embeddings (model.l2_normalize=true): its "
        "weights are the density of distances on the unit sphere"
    )
    if tf.executing_eagerly():
        off = tf.reduce_any(tf.abs(norms - 1) > tolerance)
        off &= tf.reduce_all(tf.math.is_finite(norms))
        if bool(off):
            raise ValueError(message)
        return []
    finite = tf.where(tf.math.is_finite(norms), norms, tf.ones_like(norms))
    ones = tf.ones_like(finite)
    return [tf.debugging.assert_near(finite, ones, atol=tolerance, message=message)]


def drawn_items(d, log_weights, uniforms, blocks, slots, margin, soft_margin):
    """Stage 3 of either form: d [R, N] (no gradient) and its log-weights [R, N] for the
    anchors of ``blocks``, uniforms [R, slots] -> one negative drawn per (anchor, positive
    slot), and (sum of the items [], counts [2] int64: valid and active, d sum / d d [R, N])
    over the drawn triplets."""
    neg_cols, has_weight = draw_negatives(log_weights, uniforms)
    pos_cols, exists = positive_columns(blocks, slots)
    valid = tf.logical_and(exists, has_weight[:, None])
    x = tf.gather(d, pos_cols, batch_dims=1) - tf.gather(d, neg_cols, batch_dims=1)
    values, coef, active = items(x, tf.cast(margin, d.dtype), soft_margin)
    zero = tf.zeros_like(values)
    counts = tf.stack(
        [
            tf.reduce_sum(tf.cast(valid, tf.int64)),
            tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64)),
        ]
    )
    coef = tf.where(valid, coef, zero)
    grad = to_matrix(
        tf.concat([coef, -coef], 1), tf.concat([pos_cols, neg_cols], 1), tf.shape(d)[1]
    )
    return tf.reduce_sum(tf.where(valid, values, zero)), counts, grad
