"""Pieces the strategies and the engines share: masks, class blocks, positive slots,
hinge items, exact gradients.

Shapes: a strategy mines a distance matrix ``d`` [B, N] whose rows are the anchors (the
batch) and whose columns are the batch (first B columns, so (a, a) is the anchor itself)
followed by M = N - B memory entries (cross-batch memory; M = 0 without it). ``labels``
below is the columns' labels [N]; the anchors' are its first B.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


def rows_and_columns(d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """d [B, N] -> (B, N) as scalar tensors."""
    shape = tf.shape(d)
    return shape[0], shape[1]


def negatives(labels: tf.Tensor, b) -> tf.Tensor:
    """labels [N] -> [B, N] bool, y_a != y_n. Engines build only the masks they use."""
    return tf.not_equal(labels[:b, None], labels[None, :])


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
    return Blocks(order, start, place - start, tf.gather(block_size, anchor_block) - 1)


def slot(j: tf.Tensor, blocks: Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Column of every anchor's j-th positive, [B] int32, and whether it exists, [B] bool.

    Anchors with fewer than j + 1 positives get their own column: (a, a) is never a valid
    pair, so writes there are harmless and no extra masking is needed downstream.
    """
    rows = tf.range(tf.shape(blocks.n_pos)[0])
    exists = j < blocks.n_pos
    place = blocks.start + j + tf.cast(j >= blocks.self_rank, tf.int32)  # skip the anchor
    col = tf.gather(blocks.order, tf.where(exists, place, 0))
    return tf.where(exists, col, rows), exists


def positive_columns(blocks: Blocks, k) -> tuple[tf.Tensor, tf.Tensor]:
    """Slots 0 .. k-1 of every anchor at once: (columns [B, k] int32, the anchor's own
    column where the slot is empty; exists [B, k] bool, the prefix j < n_pos)."""
    b = tf.shape(blocks.n_pos)[0]
    j = tf.range(k)[None, :]
    exists = j < blocks.n_pos[:, None]
    place = blocks.start[:, None] + j + tf.cast(j >= blocks.self_rank[:, None], tf.int32)
    cols = tf.gather(blocks.order, tf.where(exists, place, 0))
    return tf.where(exists, cols, tf.range(b)[:, None]), exists


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


def items(x, margin, soft_margin):
    """x = d_ap - d_an (any shape) -> (loss per item, its derivative w.r.t. x, x counts as
    active), each shaped like x. Hinge: relu(x + margin), active if > 0; soft: softplus(x),
    active if x > 0."""
    if soft_margin:
        return tf.nn.softplus(x), tf.sigmoid(x), x > 0
    shifted = x + tf.cast(margin, x.dtype)
    active = shifted > 0
    return tf.nn.relu(shifted), tf.cast(active, x.dtype), active


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
