"""The one-pick engines: batch-hard and easy-positive keep one (positive, negative) per anchor.

Mining needs only the order of each row's distances, and d(a, c)^2 = |e_a|^2 + s(a, c) with
the score s(a, c) = |c|^2 - 2 e_a . c: within a row, the order of d (squared or not: the
square root is increasing) is the order of s. So the engines

1. score: s [R, N] = (-2 e) @ c^T + |c|^2, one matmul per block of R anchors (scaling by -2
   is exact, so s = |c|^2 - 2 e . c as computed); no anchor norm, no square root, no gradient;
2. mine: the label mask, the anchor's own column taken out (``set_diag``), one arg-max /
   arg-min per row: two columns per anchor;
3. reduce: the 2B distances that count, straight from the embeddings ([B, D]), and the mean
   of their hinges. The backward pass is two gathers, O(B D): no [B, N] gradient, no
   backward matmuls.

Two forms give the same columns (:func:`tripletlab.losses.engines.one_pick_engine` picks by
the problem's size): ``dense`` scores all B rows at once ([B, N]); ``blocked`` loops over
blocks of rows in a ``tf.while_loop`` ([R, N] at a time: O(R N) memory, and the block stays
in cache). Ties go to the lowest column, as ``argmax`` / ``argmin`` and the brute force do.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tripletlab.losses import engines
from tripletlab.losses.distances import prepare, with_memory_labels
from tripletlab.losses.pieces import items, nan_unless_finite, rows_take

ONE_PICK = ("batch_hard", "easy_positive")


def _block_picks(scores, row_labels, column_labels, first_row, strategy, hard_negative):
    """scores [R, N] of anchors first_row .. first_row + R - 1, their labels [R], the column
    labels [N] -> (positive [R], negative [R]) int32 columns, and valid [R] bool: the anchor
    has a positive and a negative (else its columns are arbitrary)."""
    inf = tf.constant(np.inf, scores.dtype)
    same = tf.equal(row_labels[:, None], column_labels[None, :])
    own = tf.fill(tf.shape(row_labels), inf if strategy == "easy_positive" else -inf)
    if strategy == "batch_hard":  # the farthest positive, the nearest negative
        candidates = tf.linalg.set_diag(tf.where(same, scores, -inf), own, k=first_row)
        positive = tf.argmax(candidates, axis=1, output_type=tf.int32)
        has_positive = rows_take(candidates, positive) > -inf
    else:  # easy-positive: the nearest positive
        candidates = tf.linalg.set_diag(tf.where(same, scores, inf), own, k=first_row)
        positive = tf.argmin(candidates, axis=1, output_type=tf.int32)
        has_positive = rows_take(candidates, positive) < inf
    negative_scores = tf.where(same, inf, scores)
    if strategy == "batch_hard" or hard_negative:
        negative = tf.argmin(negative_scores, axis=1, output_type=tf.int32)
        has_negative = rows_take(negative_scores, negative) < inf
        return positive, negative, tf.logical_and(has_positive, has_negative)
    # The nearest negative strictly farther than the positive, else the farthest negative
    # (computed only when some anchor needs it).
    s_ap = rows_take(scores, positive)
    farther = tf.where(negative_scores > s_ap[:, None], negative_scores, inf)
    nearest = tf.argmin(farther, axis=1, output_type=tf.int32)
    found = rows_take(farther, nearest) < inf

    def farthest():
        far = tf.argmax(tf.where(same, -inf, scores), axis=1, output_type=tf.int32)
        return far, tf.logical_or(found, rows_take(negative_scores, far) < inf)

    far, has_negative = tf.cond(tf.reduce_all(found), lambda: (nearest, found), farthest)
    return positive, tf.where(found, nearest, far), tf.logical_and(has_positive, has_negative)


def mine(embeddings, columns, labels, column_labels, strategy, hard_negative, rows=None):
    """Stages 1-2: anchors [B, D] against columns [N, D] (the first B are the anchors) ->
    (positive [B], negative [B]) int32 columns and valid [B] bool, no gradient. ``rows``: None (dense: one
    [B, N] block), or the anchors per block (blocked: a while loop, the last block shorter)."""
    e, c = tf.stop_gradient(embeddings), tf.stop_gradient(columns)
    norms = tf.reduce_sum(c * c, axis=1)  # [N]

    def block(anchors, anchor_labels, start):
        scores = tf.matmul(-2 * anchors, c, transpose_b=True) + norms  # [R, N]
        return _block_picks(scores, anchor_labels, column_labels, start, strategy, hard_negative)

    if rows is None:
        return block(e, labels, 0)
    b = tf.shape(e)[0]
    n_blocks = (b + rows - 1) // rows

    def body(i, *arrays):
        start, stop = i * rows, tf.minimum((i + 1) * rows, b)
        picked = block(e[start:stop], labels[start:stop], start)
        return i + 1, *(array.write(i, x) for array, x in zip(arrays, picked, strict=True))

    arrays = [tf.TensorArray(t, size=n_blocks, infer_shape=False) for t in (tf.int32,) * 2]
    arrays.append(tf.TensorArray(tf.bool, size=n_blocks, infer_shape=False))
    _, *arrays = tf.while_loop(
        lambda i, *_: i < n_blocks, body, (tf.constant(0), *arrays), parallel_iterations=2
    )
    return tuple(array.concat() for array in arrays)


def _distance(x, y, squared):
    """Rows of x and y [B, D] -> their distances [B]; 0 (and gradient 0) where they coincide."""
    d2 = tf.reduce_sum(tf.square(x - y), axis=1)
    if squared:
        return d2
    tiny = tf.constant(np.finfo(d2.dtype.as_numpy_dtype).tiny, d2.dtype)
    return tf.where(d2 > 0, tf.sqrt(tf.maximum(d2, tiny)), tf.zeros([], d2.dtype))


def one_pick_loss(
    strategy,
    labels,
    embeddings,
    margin,
    squared,
    soft_margin,
    *,
    negatives="semi_hard",
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Batch-hard or easy-positive (``negatives`` "semi_hard" or "hard"): labels [B],
    embeddings [B, D], memory None or (labels [M], embeddings [M, D]) -> (loss [],
    fraction []): the mean of the anchors' hinges over anchors with a positive and a
    negative among the N = B + M columns, and the share of them with h > 0 (soft margin:
    d_ap > d_an). ``engine``: "dense" or "blocked" forces a form; anything else lets
    :func:`tripletlab.losses.engines.one_pick_engine` choose."""
    # 1. prepare: the columns are the batch, then the memory (no gradient)
    labels, embeddings = prepare(labels, embeddings)
    columns, column_labels, checked = embeddings, labels, embeddings
    if memory is not None:
        memory_embeddings = tf.stop_gradient(tf.cast(memory[1], embeddings.dtype))
        labels, column_labels = with_memory_labels(labels, memory[0])
        columns = tf.concat([embeddings, memory_embeddings], axis=0)
        checked = columns
    n = tf.shape(column_labels)[0]
    # 2. mine, by the engine the rule picks for [B, N]
    args = (embeddings, columns, labels, column_labels, strategy, negatives == "hard")
    name = engines.one_pick_engine(labels.shape[0], column_labels.shape[0], engine, jit_compile)
    rows = engines.block_rows(n)
    if strategy == "easy_positive":
        # Half the rows: its semi-hard pick holds about twice batch-hard's [R, N] temporaries
        # (peak at B = 4096: 1.5x batch-hard's with the same rows, 0.9-1.05x with half; the
        # time the same within the noise, 2 EPYC cores).
        rows = tf.maximum(rows // 2, 1)
    if name == "dense":
        positive, negative, valid = mine(*args)
    elif name == "blocked":
        positive, negative, valid = mine(*args, rows=rows)
    else:  # sizes known only at run time: the same rule, as a tf.cond
        b = tf.shape(labels)[0]
        positive, negative, valid = tf.cond(
            tf.cast(b, tf.int64) * tf.cast(n, tf.int64) <= engines.DENSE_ELEMENTS,
            lambda: mine(*args),
            lambda: mine(*args, rows=rows),
        )
    # 3. reduce: the picked distances from the embeddings, with their gradient
    picked = tf.gather(columns, tf.concat([positive, negative], axis=0))  # [2B, D]
    d_ap, d_an = tf.split(_distance(tf.tile(embeddings, [2, 1]), picked, squared), 2)
    values, _, active = items(d_ap - d_an, margin, soft_margin)
    # Each valid anchor weighs 1 / count, the others 0: no anchor counted gives 0, not NaN.
    counted = tf.cast(valid, values.dtype)
    weight = counted / tf.maximum(tf.reduce_sum(counted), 1)
    loss = tf.reduce_sum(values * weight)
    fraction = tf.reduce_sum(tf.cast(active, values.dtype) * weight)
    return nan_unless_finite(checked, loss, fraction)
