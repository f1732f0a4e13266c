"""Pieces the strategies and the engines share: masks, class blocks, positive slots,
hinge items, exact gradients.

Shapes: a strategy mines a distance matrix ``d`` [B, N] whose rows are the anchors (the
batch) and whose columns are the batch (first B columns, so (a, a) is the anchor itself)
followed by M = N - B memory entries (cross-batch memory; M = 0 without it). ``labels``
below is the columns' labels [N]; the anchors' are its first B. A block of rows (R anchors,
losses/blocked.py) is d [R, N] with ``Blocks.rows``: each anchor's own column is in ``own``.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


def rows_and_columns(d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """d [B, N] -> (B, N) as scalar tensors."""
    shape = tf.shape(d)
    return shape[0], shape[1]


def negatives(labels: tf.Tensor, own: tf.Tensor) -> tf.Tensor:
    """labels [N], own [R] the anchors' columns (Blocks.own) -> [R, N] bool, y_a != y_n.
    Engines build only the masks they use."""
    return tf.not_equal(tf.gather(labels, own)[:, None], labels[None, :])


def masks(labels: tf.Tensor, b) -> tuple[tf.Tensor, tf.Tensor]:
    """labels [N] -> (positive [B, N], negative [B, N]) bool; positive excludes column a."""
    same = tf.equal(labels[:b, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(b, tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def ratio(num: tf.Tensor, den: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """num / den as a dtype scalar, 0 when den == 0 (nothing counted must not give NaN)."""
    num, den = tf.cast(num, dtype), tf.cast(den, dtype)
    return tf.where(den > 0, num / tf.maximum(den, 1), tf.zeros_like(num))


def nan_unless_finite(embeddings, loss, fraction):
    """(loss, fraction), or NaNs if any embedding is NaN / inf.

    The mining compares distances, and a comparison with NaN is just False: without this a
    diverged model could get a finite loss, and training would not stop on it.
    """
    finite = tf.reduce_all(tf.math.is_finite(embeddings))
    nan = tf.constant(float("nan"), loss.dtype)
    return tf.where(finite, loss, nan), tf.where(finite, fraction, nan)


def rows_take(matrix: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """matrix [B, N], index [B] -> matrix[a, index[a]] for every row, [B]."""
    return tf.gather(matrix, index[:, None], batch_dims=1)[:, 0]


class Blocks(NamedTuple):
    """The columns grouped by label, so each anchor's positives are a contiguous run."""

    order: tf.Tensor  # [N] int32: column indices sorted by label
    start: tf.Tensor  # [B] int32: where each anchor's class starts in `order`
    self_rank: tf.Tensor  # [B] int32: the anchor's own place inside that run
    n_pos: tf.Tensor  # [B] int32: number of positives (class size among the columns - 1)
    own: tf.Tensor  # [B] int32: each anchor's own column: row a of d is the anchor own[a]

    def rows(self, start, stop) -> Blocks:
        """The anchors start .. stop - 1 only (rows of a block: losses/blocked.py)."""
        cut = (x[start:stop] for x in (self.start, self.self_rank, self.n_pos, self.own))
        return Blocks(self.order, *cut)


def class_blocks(labels: tf.Tensor, b) -> Blocks:
    """labels [N] of the columns, b anchors (the first b columns) -> Blocks.
    O(N log N) time, O(N) memory (no [B, N] mask needed)."""
    n = tf.shape(labels)[0]
    order = tf.argsort(labels, stable=True)
    sorted_labels = tf.gather(labels, order)
    first = tf.concat([[True], tf.not_equal(sorted_labels[1:], sorted_labels[:-1])], axis=0)
    block = tf.cumsum(tf.cast(first, tf.int32)) - 1  # class id, in sorted order
    position = tf.range(n)
    block_start = tf.math.unsorted_segment_min(position, block, n)
    block_size = tf.math.unsorted_segment_sum(tf.ones_like(position), block, n)
    place = tf.math.invert_permutation(order)[:b]  # where each anchor sits in `order`
    anchor_block = tf.gather(block, place)
    start = tf.gather(block_start, anchor_block)
    n_pos = tf.gather(block_size, anchor_block) - 1
    return Blocks(order, start, place - start, n_pos, tf.range(tf.shape(place)[0]))


def slot(j: tf.Tensor, blocks: Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Column of every anchor's j-th positive, [B] int32, and whether it exists, [B] bool.

    Anchors with fewer than j + 1 positives get their own column: (a, a) is never a valid
    pair, so writes there are harmless and no extra masking is needed downstream.
    """
    exists = j < blocks.n_pos
    place = blocks.start + j + tf.cast(j >= blocks.self_rank, tf.int32)  # skip the anchor
    col = tf.gather(blocks.order, tf.where(exists, place, 0))
    return tf.where(exists, col, blocks.own), exists


def positive_columns(blocks: Blocks, k) -> tuple[tf.Tensor, tf.Tensor]:
    """Slots 0 .. k-1 of every anchor at once: (columns [B, k] int32, the anchor's own
    column where the slot is empty; exists [B, k] bool, the prefix j < n_pos)."""
    j = tf.range(k)[None, :]
    exists = j < blocks.n_pos[:, None]
    place = blocks.start[:, None] + j + tf.cast(j >= blocks.self_rank[:, None], tf.int32)
    cols = tf.gather(blocks.order, tf.where(exists, place, 0))
    return tf.where(exists, cols, blocks.own[:, None]), exists


def scatter_index(col: tf.Tensor) -> tf.Tensor:
    """[B] column per row -> [B, 2] (row, column) indices for tensor_scatter_nd_*."""
    return tf.stack([tf.range(tf.shape(col)[0]), col], axis=1)


def to_matrix(values: tf.Tensor, cols: tf.Tensor, n) -> tf.Tensor:
    """Sum values [B, K] into a [B, n] matrix at (row, cols[row, j]); duplicates add up.

    unsorted_segment_sum over flat indices: on CPU 3x faster than scatter_nd for B x K
    updates."""
    b = tf.shape(cols)[0]
    flat_index = tf.reshape(cols + tf.range(b)[:, None] * n, [-1])
    flat = tf.math.unsorted_segment_sum(tf.reshape(values, [-1]), flat_index, b * n)
    return tf.reshape(flat, [b, n])


def row_histogram(values: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """values [B, N] int32 -> [B, size] counts of 0 .. size - 1 per row; larger values are
    not counted. The raw op: tf.math.bincount adds a pass over the input for its maximum."""
    no_weights = tf.zeros([0], tf.int32)
    return tf.raw_ops.DenseBincount(input=values, size=size, weights=no_weights)


def segment_argmin(values: tf.Tensor, ids: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Column of the smallest value per segment, the lowest column among equal values.

    values [R, C] float (R rows of C columns), ids [R, C] int32 segment of each entry (< n).
    Returns [n] int32, >= C for an empty segment. float32: one segment min over int64 keys:
    the float64 bits of a float32 value have 29 low zero bits, which hold the column
    (C < 2^29), and the bits of non-negative floats sort like their values (negative ones
    stay below them). float64 has no spare bits: the minimum, then the lowest column
    holding it.
    """
    c = tf.shape(values)[1]
    if values.dtype == tf.float32:
        bits = tf.bitcast(tf.cast(values, tf.float64), tf.int64)
        keys = bits + tf.cast(tf.range(c), tf.int64)[None, :]
        best = tf.math.unsorted_segment_min(keys, ids, n)  # empty: int64 max
        return tf.cast(tf.bitwise.bitwise_and(best, 2**29 - 1), tf.int32)  # empty: 2^29 - 1
    smallest = tf.math.unsorted_segment_min(values, ids, n)
    at_min = tf.equal(values, tf.gather(smallest, ids))
    return tf.math.unsorted_segment_min(tf.where(at_min, tf.range(c)[None, :], c), ids, n)


def items(x, margin, soft_margin):
    """x = d_ap - d_an (any shape) -> (loss per item, its derivative w.r.t. x, x counts as
    active), each shaped like x. Hinge: relu(x + margin), active if > 0; soft: softplus(x),
    active if x > 0."""
    if soft_margin:
        return tf.nn.softplus(x), tf.sigmoid(x), x > 0
    shifted = x + tf.cast(margin, x.dtype)
    active = shifted > 0
    return tf.nn.relu(shifted), tf.cast(active, x.dtype), active


def semi_hard_items(d, d_ap, cols, pick, exists, has_neg, margin, soft_margin):
    """The semi-hard engines' output from their picks: d [B, N]; per anchor K slots of
    positives d_ap [B, K] at columns cols [B, K], each compared with the negative in column
    pick [B, K]; exists [B, K] and has_neg [B] say which slots count."""
    values, coef, active = items(d_ap - tf.gather(d, pick, batch_dims=1), margin, soft_margin)
    valid = tf.logical_and(exists, has_neg[:, None])
    zero = tf.zeros_like(values)
    total = tf.reduce_sum(tf.where(valid, values, zero))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    coef = tf.where(valid, coef, zero)
    # +coef at (a, p), -coef at (a, chosen); several positives may share a negative.
    grad = to_matrix(tf.concat([coef, -coef], 1), tf.concat([cols, pick], 1), tf.shape(d)[1])
    return total, n_active, grad


def with_gradient(d: tf.Tensor, value: tf.Tensor, grad_d: tf.Tensor, scale=None) -> tf.Tensor:
    """value (a scalar computed without gradient), differentiable w.r.t. d with d value/d d
    = grad_d [B, N] (times the scalar `scale`, if given: one pass over [B, N] fewer). Used
    where the forward pass already produced the exact gradient and recording it op by op
    would keep O(B N) per loop step alive for the backward pass."""

    @tf.custom_gradient
    def attach(x):
        def backward(upstream):
            if scale is not None:
                upstream = upstream * scale
            return upstream * grad_d

        return tf.identity(value), backward

    return attach(d)


# Row sorts (the "sorted" engine): int64 keys whose last bit breaks ties


def sort_keys(x: tf.Tensor) -> tf.Tensor:
    """Non-negative floats [B, N] -> int64 keys in the same order, with the last bit free.

    The bit patterns of non-negative IEEE floats sort like the values. They are < 2^63, so
    (bits - 2^62) * 2 fits in int64 without overflow and leaves bit 0 for a tie-break flag.
    """
    if x.dtype == tf.float64:
        bits = tf.bitcast(x, tf.int64)
    else:
        bits = tf.cast(tf.bitcast(x, tf.int32), tf.int64)
    return (bits - 2**62) * 2


def sort_rows(keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sort each row of int64 keys [B, N] ascending: (sorted keys, order), both [B, N]."""
    # top_k sorts descending; bitwise NOT reverses the order without the overflow of -x.
    top = tf.math.top_k(tf.bitwise.invert(keys), k=tf.shape(keys)[1], sorted=True)
    return tf.bitwise.invert(top.values), top.indices


def invert_rows(perm: tf.Tensor) -> tf.Tensor:
    """Row-wise inverse of permutations [B, N] int32: out[a, perm[a, k]] = k. O(B N)."""
    b, n = tf.shape(perm)[0], tf.shape(perm)[1]
    offset = tf.range(b)[:, None] * n  # B * N < 2^31
    inverse = tf.math.invert_permutation(tf.reshape(perm + offset, [-1]))
    return tf.reshape(inverse, [b, n]) - offset


def flag(keys: tf.Tensor) -> tf.Tensor:
    """int64 sort keys -> their tie-break bit (bit 0) is set, bool."""
    return tf.equal(tf.bitwise.bitwise_and(keys, 1), 1)
