"""Distances between embeddings, and the dtype the losses compute in."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """16-bit floats overflow (squared distances) and cannot count past 2048: float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def prepare(labels, embeddings) -> tuple[tf.Tensor, tf.Tensor]:
    """labels -> [B] integer; embeddings -> [B, D] in the compute dtype."""
    embeddings = tf.convert_to_tensor(embeddings)
    embeddings = tf.cast(embeddings, compute_dtype(embeddings.dtype))
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    if not labels.dtype.is_integer:
        labels = tf.cast(labels, tf.int64)
    return labels, embeddings


def with_memory_labels(labels, memory_labels) -> tuple[tf.Tensor, tf.Tensor]:
    """(anchor labels [B], column labels [B + M]: the batch's, then the memory's), both
    int64: a memory label beyond the batch labels' dtype must not wrap into a batch class."""
    labels = tf.cast(labels, tf.int64)
    memory_labels = tf.cast(tf.reshape(memory_labels, [-1]), tf.int64)
    return labels, tf.concat([labels, memory_labels], axis=0)


def pairwise_distances(embeddings, squared: bool = False, memory=None) -> tf.Tensor:
    """Euclidean (or squared euclidean) distances from every row to every row (and memory).

    embeddings: [B, D] float; memory: None or [M, D] embeddings of earlier batches (no
    gradient flows into them). Returns [B, B] (or [B, B + M]: the batch's columns first) in
    float32 (float64 for float64 input). Uses the Gram matrix (O(B (B + M)) memory, never
    [B, B, D]). The distance between identical rows, the diagonal and a memory row equal to
    a batch row included, is exactly 0 (:func:`unclamped_squared`). With squared=False the
    square root is masked where the squared distance is 0 (:func:`masked_sqrt`), so the
    gradient at coincident embeddings is 0, not NaN.
    """
    e = tf.convert_to_tensor(embeddings)
    e = tf.cast(e, compute_dtype(e.dtype))
    columns = e
    if memory is not None:
        m = tf.stop_gradient(tf.cast(memory, e.dtype))
        columns = tf.concat([e, m], axis=0)
    d2 = tf.maximum(unclamped_squared(e, columns, tf.reduce_sum(columns * columns, axis=1)), 0.0)
    return d2 if squared else masked_sqrt(d2)


def unclamped_squared(anchors, columns, column_norms, start=0) -> tf.Tensor:
    """Squared distances before the clamp at 0: anchors [R, D], which are columns[start :
    start + R]; columns [N, D]; column_norms [N], their reduce_sum(c * c) -> [R, N].

    d2 = (-2 a.c + 2 |a|^2) + (|c|^2 - |a|^2): the first |a|^2 from the anchor's own column of
    the matmul (-2 e @ c.T is exact scaling), the second and |c|^2 from one reduce_sum, so a
    column equal to the anchor (its own, a duplicate in the batch or in the memory) gets
    0 + 0 exactly: one matmul row rounds equal columns alike, one reduce_sum equal rows.
    |a|^2 + |c|^2 - 2 a.c mixes the two roundings (~3e-5 to 3e-4 after the sqrt, float32).
    """
    minus_2_dot = tf.matmul(-2.0 * anchors, columns, transpose_b=True)
    rows = tf.shape(anchors)[0]
    minus_2_own = tf.linalg.diag_part(minus_2_dot[:, start : start + rows])  # [R]
    anchor_norms = column_norms[start : start + rows]
    return (minus_2_dot - minus_2_own[:, None]) + (column_norms[None, :] - anchor_norms[:, None])


def masked_sqrt(d2: tf.Tensor) -> tf.Tensor:
    """sqrt of squared distances >= 0, with 0 (and a gradient of 0) where d2 is 0.

    sqrt never sees 0 (its gradient there is infinite, and 0 * inf = NaN): the smallest
    normal float stands in, and the where takes the gradient of those entries to 0.
    """
    tiny = tf.constant(np.finfo(d2.dtype.as_numpy_dtype).tiny, d2.dtype)
    return tf.where(d2 > 0, tf.sqrt(tf.maximum(d2, tiny)), tf.zeros([], d2.dtype))
