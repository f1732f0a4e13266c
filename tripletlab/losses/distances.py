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


def pairwise_distances(embeddings, squared: bool = False, memory=None) -> tf.Tensor:
    """Euclidean (or squared euclidean) distances from every row to every row (and memory).

    embeddings: [B, D] float; memory: None or [M, D] embeddings of earlier batches (no
    gradient flows into them). Returns [B, B] (or [B, B + M]: the batch's columns first) in
    float32 (float64 for float64 input). Uses the Gram matrix (O(B (B + M)) memory, never
    [B, B, D]). The distance between identical rows, the diagonal and a memory row equal to
    a batch row included, is exactly 0 (see the comment on d2). With squared=False the
    square root is masked where the squared distance is 0, so the gradient at coincident embeddings is 0, not NaN (the derivative
    of sqrt at 0 is infinite).
    """
    e = tf.convert_to_tensor(embeddings)
    e = tf.cast(e, compute_dtype(e.dtype))
    columns = e
    if memory is not None:
        m = tf.stop_gradient(tf.cast(memory, e.dtype))
        columns = tf.concat([e, m], axis=0)
    minus_2_gram = tf.matmul(-2.0 * e, columns, transpose_b=True)  # exactly -2 * (e @ c.T)
    own = -0.5 * tf.linalg.diag_part(minus_2_gram)  # [B]: the batch's squared norms (Gram)
    column_norms = tf.reduce_sum(columns * columns, axis=1)  # [B (+ M)]
    # d2 = (-2 a.c + 2 |a|^2) + (|c|^2 - |a|^2): the first |a|^2 from the Gram diagonal, the
    # second and |c|^2 from one reduce_sum, so a column equal to the anchor (its own, a
    # duplicate in the batch or in the memory) gets 0 + 0 exactly. |a|^2 + |c|^2 - 2 a.c
    # with |c|^2 of a memory row from reduce_sum mixed two roundings: ~3e-5 after the sqrt.
    d2 = (minus_2_gram + 2.0 * own[:, None]) + (
        column_norms[None, :] - column_norms[: tf.shape(e)[0]][:, None]
    )
    d2 = tf.maximum(d2, 0.0)  # >= 0
    if squared:
        return d2
    # sqrt never sees 0 (its gradient there is infinite, and 0 * inf = NaN): the smallest
    # normal float stands in, and the where takes the gradient of those entries to 0.
    tiny = tf.constant(np.finfo(d2.dtype.as_numpy_dtype).tiny, d2.dtype)
    return tf.where(d2 > 0, tf.sqrt(tf.maximum(d2, tiny)), tf.zeros([], d2.dtype))
