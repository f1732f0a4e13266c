"""Triplet losses with online mining: batch-all, batch-hard and semi-hard.

Every function takes ``labels`` (int, shape [B]) and ``embeddings`` (float, shape [B, D]) and
returns ``(loss, fraction)``, two scalars. They are pure tensor functions: they run eagerly,
inside ``tf.function`` and under XLA (``jit_compile=True``). float16 / bfloat16 embeddings
are computed in float32 (the sums below overflow or lose counts in 16 bits); float64 stays
float64. Labels that are not integers are cast to int64.

Notation: ``d`` is the [B, B] distance matrix, ``h = max(d(a,p) - d(a,n) + margin, 0)`` the
hinge of a triplet, or ``softplus(d(a,p) - d(a,n))`` with ``soft_margin=True`` ("In Defense of
the Triplet Loss", Hermans et al. 2017; the margin is then ignored).

* batch-all: every valid triplet (a != p, y_a = y_p, y_n != y_a). Hinge: loss = sum of the
  h > 0 / their number, fraction = their number / valid triplets. Soft margin: loss = mean
  softplus over all valid triplets, fraction = share of them with d(a,p) > d(a,n).
* batch-hard: per anchor with a positive and a negative, its farthest positive and nearest
  negative; loss = mean over those anchors, fraction = share of them with h > 0 (soft
  margin: with d(a,p) > d(a,n)).
* semi-hard (FaceNet): per valid pair (a, p) whose anchor has a negative, the nearest negative
  strictly farther than p, else the farthest negative; loss = mean over those pairs, fraction
  = share with h > 0 (soft margin: with d(a,p) > d(a,n), which only happens when no negative
  is farther than p).

When nothing is counted, loss and fraction are 0 (never NaN). When an embedding is NaN or
inf, both are NaN (never a finite loss that would hide a diverged model).

Exact, and O(B^2) memory
------------------------
The textbook batch-all builds the [B, B, B] tensor of every triplet, and tf-addons' semi-hard
tiles the distances to [B*B, B]: 2 GB of float32 at B = 4096. Nothing here is larger than
[B, B]. Both mining problems are, per anchor a, "where does each positive's threshold fall
among a's negatives":

* batch-all (hinge) needs, for each positive p, c(a,p) = #{n : d_an < d_ap + m}, and for each
  negative n, r(a,n) = #{p : d_ap + m > d_an}. Then the sum of the positive hinges is
  ``sum_p c(a,p) (d_ap + m) - sum_n r(a,n) d_an``: linear in d with integer coefficients,
  so its gradient is exact too (counts are piecewise constant).
* semi-hard needs, for each positive, the negative that follows d_ap in a's sorted negatives.

Two exact ways compute these integer results from distances without gradient:

1. Positive slots (fast when classes are small, e.g. PK batches with K = 4): group the batch
   by label so an anchor's positives are a contiguous run, and loop over the slot j = 0 ..
   max class size - 2: one [B, B] comparison of every anchor's j-th positive against all its
   negatives per step. Time O(B^2 * S), S = largest class size - 1; memory O(B^2).
2. One sort per row (when classes are big): sort, per anchor, the positives' thresholds and
   the negatives' distances together, as int64 keys whose last bit breaks ties the way the
   definition needs (a negative exactly at the threshold has h = 0 and is not counted; one
   at the same distance as p is not "farther"). Exclusive cumulative sums of the type flags
   give c and r; a stable partition gives the negatives in order. Time O(B^2 log B). No
   ``tf.searchsorted`` over [B, B]: on CPU it is 2x slower than the sort itself, and XLA
   lowers it to a [B, B, B] comparison.

``_SLOT_LIMIT`` picks between them at run time (``tf.cond``). Soft-margin batch-all
cannot use counts (softplus is not linear), so it always loops over slots, summing softplus
and its derivative per slot: O(B^2) memory, O(B^2 * S) time, which is O(B^3) when one class
fills the batch.

Gradients: batch-all (hinge) is rebuilt from ``d`` as ``sum(w * d)`` with the integer
coefficients w, an ordinary differentiable expression. The other losses compute, in the
forward pass, both the value and its exact derivative w.r.t. ``d`` (+h'(x) at (a, p), -h'(x)
at the chosen negative; summed per slot for soft batch-all) and attach it with
``tf.custom_gradient``: recording the loop or the gathers for the tape would keep O(B^2) per
loop step alive, or cost a slow [B, B] gather backward. First-order gradients only.

Distances use the Gram matrix; ``squared=False`` takes a square root that is masked at 0, so
coincident embeddings get a zero (finite) gradient instead of NaN, as in
omoindrot/tensorflow-triplet-loss.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tripletlab.registry import LOSSES

# Loop over positive slots while there are at most this many; sort each row beyond. One slot
# costs a few elementwise passes over [B, B]; the sort path costs about as much as 30-50 of
# them on CPU. Crossovers measured at B = 256 and 1024 (fwd + bwd, 2 CPU cores); both paths
# give identical results, so this only moves time.
_SLOT_LIMIT = {"batch_all": 40, "semi_hard": 24}

# Key of the anchor itself in the row sort: after every distance key, and odd like a
# negative's key, so the flag tests below exclude it explicitly.
_LAST = tf.int64.max


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    # 16-bit floats overflow (squared distances) and cannot count past 2048: use float32.
    return tf.float64 if dtype == tf.float64 else tf.float32


def _prepare(labels, embeddings) -> tuple[tf.Tensor, tf.Tensor]:
    """labels -> [B] integer; embeddings -> [B, D] in the compute dtype."""
    embeddings = tf.convert_to_tensor(embeddings)
    embeddings = tf.cast(embeddings, _compute_dtype(embeddings.dtype))
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    if not labels.dtype.is_integer:
        labels = tf.cast(labels, tf.int64)
    return labels, embeddings


def pairwise_distances(embeddings, squared: bool = False) -> tf.Tensor:
    """Euclidean (or squared euclidean) distances between all rows.

    embeddings: [B, D] float. Returns [B, B] in float32 (float64 for float64 input). Uses the
    Gram matrix (O(B^2) memory, not [B, B, D]). The squared norms are the Gram diagonal, so
    the diagonal, and the distance between identical rows, is exactly 0: n - 2n + n = 0 has
    no rounding (scaling by 2 is exact). With squared=False the square root is masked where
    the squared distance is 0, so the gradient at coincident embeddings is 0, not NaN (the
    derivative of sqrt at 0 is infinite).
    """
    e = tf.convert_to_tensor(embeddings)
    e = tf.cast(e, _compute_dtype(e.dtype))
    minus_2_gram = tf.matmul(-2.0 * e, e, transpose_b=True)  # exactly -2 * (e @ e.T)
    norms = -0.5 * tf.linalg.diag_part(minus_2_gram)
    d2 = tf.maximum((minus_2_gram + norms[:, None]) + norms[None, :], 0.0)  # rounding: >= 0
    if squared:
        return d2
    # sqrt never sees 0 (its gradient there is infinite, and 0 * inf = NaN): the smallest
    # normal float stands in, and the where takes the gradient of those entries to 0.
    tiny = tf.constant(np.finfo(d2.dtype.as_numpy_dtype).tiny, d2.dtype)
    return tf.where(d2 > 0, tf.sqrt(tf.maximum(d2, tiny)), tf.zeros([], d2.dtype))


def _masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """labels [B] -> (positive [B, B], negative [B, B]) bool; positive excludes a == p."""
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def _negatives(labels: tf.Tensor) -> tf.Tensor:
    """labels [B] -> [B, B] bool, y_a != y_n. Engines build only the masks they use."""
    return tf.not_equal(labels[:, None], labels[None, :])


def _ratio(num: tf.Tensor, den: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """num / den as a dtype scalar, 0 when den == 0 (nothing counted must not give NaN)."""
    num, den = tf.cast(num, dtype), tf.cast(den, dtype)
    return tf.where(den > 0, num / tf.maximum(den, 1), tf.zeros_like(num))


def _nan_unless_finite(embeddings, loss, fraction):
    """(loss, fraction), or NaNs if any embedding is NaN / inf.

    The mining compares distances, and a comparison with NaN is just False: without this a
    diverged model could get a finite loss, and training would not stop on it.
    """
    finite = tf.reduce_all(tf.math.is_finite(embeddings))
    nan = tf.constant(float("nan"), loss.dtype)
    return tf.where(finite, loss, nan), tf.where(finite, fraction, nan)


def _rows_take(matrix: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """matrix [B, N], index [B] -> matrix[a, index[a]] for every row, [B]."""
    return tf.gather(matrix, index[:, None], batch_dims=1)[:, 0]


class _Blocks(NamedTuple):
    """The batch grouped by label, so each anchor's positives are a contiguous run."""

    order: tf.Tensor  # [B] int32: batch indices sorted by label
    start: tf.Tensor  # [B] int32: where each anchor's class starts in `order`
    self_rank: tf.Tensor  # [B] int32: the anchor's own place inside that run
    n_pos: tf.Tensor  # [B] int32: number of positives (class size - 1)


def _class_blocks(labels: tf.Tensor) -> _Blocks:
    """labels [B] -> _Blocks. O(B log B) time, O(B) memory (no [B, B] mask needed)."""
    b = tf.shape(labels)[0]
    order = tf.argsort(labels, stable=True)
    sorted_labels = tf.gather(labels, order)
    first = tf.concat([[True], tf.not_equal(sorted_labels[1:], sorted_labels[:-1])], axis=0)
    block = tf.cumsum(tf.cast(first, tf.int32)) - 1  # class id, in sorted order
    position = tf.range(b)
    block_start = tf.math.unsorted_segment_min(position, block, b)
    block_size = tf.math.unsorted_segment_sum(tf.ones_like(position), block, b)
    place = tf.math.invert_permutation(order)  # where each anchor sits in `order`
    anchor_block = tf.gather(block, place)
    start = tf.gather(block_start, anchor_block)
    return _Blocks(order, start, place - start, tf.gather(block_size, anchor_block) - 1)


def _slot(j: tf.Tensor, blocks: _Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Column of every anchor's j-th positive, [B] int32, and whether it exists, [B] bool.

    Anchors with fewer than j + 1 positives get their own index: the diagonal is never a valid
    pair, so writes there are harmless and no extra masking is needed downstream.
    """
    rows = tf.range(tf.shape(blocks.order)[0])
    exists = j < blocks.n_pos
    place = blocks.start + j + tf.cast(j >= blocks.self_rank, tf.int32)  # skip the anchor
    col = tf.gather(blocks.order, tf.where(exists, place, 0))
    return tf.where(exists, col, rows), exists


def _scatter_index(col: tf.Tensor) -> tf.Tensor:
    """[B] column per row -> [B, 2] (row, column) indices for tensor_scatter_nd_*."""
    return tf.stack([tf.range(tf.shape(col)[0]), col], axis=1)


def _sort_keys(x: tf.Tensor) -> tf.Tensor:
    """Non-negative floats [B, N] -> int64 keys in the same order, with the last bit free.

    The bit patterns of non-negative IEEE floats sort like the values. They are < 2^63, so
    (bits - 2^62) * 2 fits in int64 without overflow and leaves bit 0 for a tie-break flag.
    """
    if x.dtype == tf.float64:
        bits = tf.bitcast(x, tf.int64)
    else:
        bits = tf.cast(tf.bitcast(x, tf.int32), tf.int64)
    return (bits - 2**62) * 2


def _sort_rows(keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sort each row of int64 keys [B, N] ascending: (sorted keys, order), both [B, N]."""
    # top_k sorts descending; bitwise NOT reverses the order without the overflow of -x.
    top = tf.math.top_k(tf.bitwise.invert(keys), k=tf.shape(keys)[1], sorted=True)
    return tf.bitwise.invert(top.values), top.indices


def _invert_rows(perm: tf.Tensor) -> tf.Tensor:
    """Row-wise inverse of permutations [B, N] int32: out[a, perm[a, k]] = k. O(B N)."""
    b, n = tf.shape(perm)[0], tf.shape(perm)[1]
    offset = tf.range(b)[:, None] * n  # B * N < 2^31 (B <= 46340)
    inverse = tf.math.invert_permutation(tf.reshape(perm + offset, [-1]))
    return tf.reshape(inverse, [b, n]) - offset


def _flag(keys: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.bitwise.bitwise_and(keys, 1), 1)


def _with_gradient(d: tf.Tensor, value: tf.Tensor, grad_d: tf.Tensor) -> tf.Tensor:
    """value (a scalar computed without gradient), differentiable w.r.t. d with d value/d d
    = grad_d [B, B]. Used where the forward pass already produced the exact gradient and
    recording it op by op would keep O(B^2) per loop step alive for the backward pass."""

    @tf.custom_gradient
    def attach(x):
        def backward(upstream):
            return upstream * grad_d

        return tf.identity(value), backward

    return attach(d)


# --------------------------------------------------------------------------------------------
# Mining engines: integer results from distances without gradient
# --------------------------------------------------------------------------------------------


def _batch_all_slots(d, labels, margin, blocks: _Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-all hinge coefficients by positive slots.

    d [B, B] (no gradient), labels [B]. Returns (w [B, B] dtype of d, count [] int64):
    w[a, p] = c(a, p) for positives, w[a, n] = -r(a, n) for negatives, 0 elsewhere, and
    count = sum of c, so that the sum of the positive hinges = sum(w * d) + margin * count.
    O(B^2 * S) time, O(B^2) memory.
    """
    neg = _negatives(labels)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)  # non-negatives are never below a threshold

    def body(j, w, count):
        col, exists = _slot(j, blocks)
        threshold = tf.where(exists, _rows_take(d, col) + margin, -inf)
        below = tf.cast(neg_d < threshold[:, None], d.dtype)  # [B, B]: h(a, p_j, n) > 0
        c = tf.reduce_sum(below, axis=1)
        w = tf.tensor_scatter_nd_add(w - below, _scatter_index(col), c)
        return j + 1, w, count + tf.reduce_sum(tf.cast(c, tf.int64))

    n_slots = tf.reduce_max(blocks.n_pos)
    _, w, count = tf.while_loop(
        lambda j, w, count: j < n_slots,
        body,
        (tf.constant(0), tf.zeros_like(d), tf.constant(0, tf.int64)),
    )
    return w, count


def _batch_all_sorted(d, labels, margin) -> tuple[tf.Tensor, tf.Tensor]:
    """Same contract as :func:`_batch_all_slots`, with one sort per row. O(B^2 log B)."""
    pos, neg = _masks(labels)
    threshold = d + margin
    # Flag 0 for positives: at equal keys a positive's threshold sorts before the negative,
    # so that negative is not counted (its h is exactly 0). Thresholds <= 0 (margin < 0)
    # are below every distance anyway: clamp them to +0.0, whose bits sort first.
    pos_key = _sort_keys(tf.where(threshold > 0, threshold, tf.zeros_like(threshold)))
    keys = tf.where(pos, pos_key, tf.where(neg, _sort_keys(d) + 1, _LAST))
    keys, order = _sort_rows(keys)
    is_pos = tf.logical_not(_flag(keys))
    is_neg = tf.logical_and(_flag(keys), tf.not_equal(keys, _LAST))
    neg_before = tf.cumsum(tf.cast(is_neg, tf.int32), axis=1, exclusive=True)  # c at a p
    pos_after = tf.cumsum(tf.cast(is_pos, tf.int32), axis=1, exclusive=True, reverse=True)
    zero = tf.zeros_like(neg_before)
    w = tf.where(is_pos, neg_before, tf.where(is_neg, -pos_after, zero))
    count = tf.reduce_sum(tf.cast(tf.where(is_pos, neg_before, zero), tf.int64))
    w = tf.gather(w, _invert_rows(order), batch_dims=1)  # back to column order
    return tf.cast(w, d.dtype), count


def _items(x, margin, soft_margin):
    """x = d_ap - d_an (any shape) -> (loss per item, its derivative w.r.t. x, x counts as
    active), each shaped like x. Hinge: relu(x + margin), active if > 0; soft: softplus(x),
    active if x > 0."""
    if soft_margin:
        return tf.nn.softplus(x), tf.sigmoid(x), x > 0
    shifted = x + tf.cast(margin, x.dtype)
    active = shifted > 0
    return tf.nn.relu(shifted), tf.cast(active, x.dtype), active


def _semi_hard_slots(d, labels, margin, soft_margin, blocks: _Blocks):
    """Semi-hard loss sum and its gradient, by positive slots.

    d [B, B] (no gradient), labels [B]. Returns (sum of the items over valid pairs [],
    number of active items [] int64, d sum / d d [B, B]). The gradient is accumulated per
    slot (+coef at (a, p), -coef at the chosen negative), so no [B, B] gather of the chosen
    negatives, nor its backward pass, is needed. O(B^2 * S) time, O(B^2) memory.
    """
    neg = _negatives(labels)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)
    farthest = tf.argmax(tf.where(neg, d, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    d_farthest = _rows_take(d, farthest)
    has_neg = blocks.n_pos + 1 < tf.shape(d)[0]

    def body(j, total, n_active, grad):
        col, exists = _slot(j, blocks)
        d_ap = _rows_take(d, col)
        farther = tf.where(neg_d > d_ap[:, None], neg_d, inf)  # strictly farther negatives
        nearest = tf.argmin(farther, axis=1, output_type=tf.int32)
        d_nearest = _rows_take(farther, nearest)
        found = d_nearest < inf
        pick = tf.where(found, nearest, farthest)
        items, coef, active = _items(
            d_ap - tf.where(found, d_nearest, d_farthest), margin, soft_margin
        )
        valid = tf.logical_and(exists, has_neg)
        zero = tf.zeros_like(items)
        total += tf.reduce_sum(tf.where(valid, items, zero))
        n_active += tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
        coef = tf.where(valid, coef, zero)
        index = tf.concat([_scatter_index(col), _scatter_index(pick)], axis=0)
        grad = tf.tensor_scatter_nd_add(grad, index, tf.concat([coef, -coef], axis=0))
        return j + 1, total, n_active, grad

    n_slots = tf.reduce_max(blocks.n_pos)
    init = (tf.constant(0), tf.zeros([], d.dtype), tf.constant(0, tf.int64), tf.zeros_like(d))
    _, total, n_active, grad = tf.while_loop(lambda j, *_: j < n_slots, body, init)
    return total, n_active, grad


def _semi_hard_sorted(d, labels, margin, soft_margin):
    """Same contract as :func:`_semi_hard_slots`, with one sort per row. O(B^2 log B)."""
    pos, neg = _masks(labels)
    # Flag 0 for negatives: one at exactly d_ap sorts before p, so it is not "farther".
    keys = _sort_keys(d)
    keys = tf.where(neg, keys, tf.where(pos, keys + 1, _LAST))
    keys, order = _sort_rows(keys)
    is_neg = tf.logical_not(_flag(keys))
    neg_before = tf.cumsum(tf.cast(is_neg, tf.int32), axis=1, exclusive=True)
    n_neg = tf.reduce_sum(tf.cast(neg, tf.int32), axis=1, keepdims=True)
    # Stable partition of the sorted row, negatives first: its inverse lists the sorted
    # positions of the negatives, nearest first, i.e. the sorted negatives of each anchor.
    b = tf.shape(d)[0]
    k = tf.range(b)[None, :]
    dest = tf.where(is_neg, neg_before, n_neg + k - neg_before)
    neg_by_rank = tf.gather(order, _invert_rows(dest), batch_dims=1)  # columns, nearest first
    # The negatives sorted before p are those with d_an <= d_ap; the next one is the pick,
    # else the last (farthest) one.
    rank = tf.clip_by_value(neg_before, 0, tf.maximum(n_neg - 1, 0))
    chosen = tf.gather(neg_by_rank, rank, batch_dims=1)
    chosen = tf.gather(chosen, _invert_rows(order), batch_dims=1)  # back to column order

    valid = tf.logical_and(pos, n_neg > 0)
    items, coef, active = _items(d - tf.gather(d, chosen, batch_dims=1), margin, soft_margin)
    zero = tf.zeros_like(items)
    total = tf.reduce_sum(tf.where(valid, items, zero))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    coef = tf.where(valid, coef, zero)
    # d x / d d(a, p) = 1 and d x / d d(a, chosen) = -1; several p may share a negative.
    flat = tf.reshape(chosen + tf.range(b)[:, None] * b, [-1])
    to_negatives = tf.math.unsorted_segment_sum(tf.reshape(coef, [-1]), flat, b * b)
    return total, n_active, coef - tf.reshape(to_negatives, [b, b])


def _soft_batch_all_slots(d, labels, blocks: _Blocks):
    """Soft-margin batch-all by positive slots, with its gradient.

    d [B, B] (no gradient), labels [B]. Returns (sum of softplus(d_ap - d_an) over valid
    triplets [], number of them with d_ap > d_an [] int64, d sum / d d [B, B]).
    O(B^2 * S) time (O(B^3) for a single class), O(B^2) memory.
    """
    neg = _negatives(labels)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)

    def body(j, total, count, grad):
        col, exists = _slot(j, blocks)
        d_ap = tf.where(exists, _rows_take(d, col), -inf)
        # -inf wherever (a, p_j, n) is not a valid triplet: softplus and sigmoid give 0 there.
        x = d_ap[:, None] - neg_d
        total += tf.reduce_sum(tf.nn.softplus(x))
        count += tf.reduce_sum(tf.cast(tf.reduce_sum(tf.cast(x > 0, tf.int32), 1), tf.int64))
        s = tf.sigmoid(x)
        grad = tf.tensor_scatter_nd_add(grad - s, _scatter_index(col), tf.reduce_sum(s, 1))
        return j + 1, total, count, grad

    n_slots = tf.reduce_max(blocks.n_pos)
    init = (tf.constant(0), tf.zeros([], d.dtype), tf.constant(0, tf.int64), tf.zeros_like(d))
    _, total, count, grad = tf.while_loop(lambda j, *_: j < n_slots, body, init)
    return total, count, grad


def _use_slots(blocks: _Blocks, strategy: str) -> tf.Tensor:
    return tf.reduce_max(blocks.n_pos) <= _SLOT_LIMIT[strategy]


# --------------------------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------------------------


@LOSSES.register("batch_all")
def batch_all_triplet_loss(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-all triplet loss over every valid triplet.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []), float32 (float64 for
    float64 input). Hinge: mean of the positive hinges, fraction = positive hinges / valid
    triplets. Soft margin: mean softplus(d_ap - d_an) over valid triplets, fraction = share
    with d_ap > d_an. Memory O(B^2); time O(B^2 log B) at most for the hinge, O(B^2 * S) for
    the soft margin (S = largest class size - 1).
    """
    labels, embeddings = _prepare(labels, embeddings)
    dtype = embeddings.dtype
    d = pairwise_distances(embeddings, squared)
    d_const = tf.stop_gradient(d)
    blocks = _class_blocks(labels)
    b = tf.shape(labels)[0]
    n_neg = b - blocks.n_pos - 1
    n_valid = tf.reduce_sum(tf.cast(blocks.n_pos, tf.int64) * tf.cast(n_neg, tf.int64))

    if soft_margin:
        total, n_violating, grad = _soft_batch_all_slots(d_const, labels, blocks)
        loss = _with_gradient(
            d, _ratio(total, n_valid, dtype), grad / tf.cast(tf.maximum(n_valid, 1), dtype)
        )
        return _nan_unless_finite(embeddings, loss, _ratio(n_violating, n_valid, dtype))

    margin = tf.cast(margin, dtype)
    w, count = tf.cond(
        _use_slots(blocks, "batch_all"),
        lambda: _batch_all_slots(d_const, labels, margin, blocks),
        lambda: _batch_all_sorted(d_const, labels, margin),
    )
    # A flat dot product: no [B, B] temporary for w * d in the forward pass.
    total = tf.tensordot(tf.reshape(w, [-1]), tf.reshape(d, [-1]), 1)
    total += margin * tf.cast(count, dtype)
    return _nan_unless_finite(
        embeddings, _ratio(total, count, dtype), _ratio(count, n_valid, dtype)
    )


@LOSSES.register("batch_hard")
def batch_hard_triplet_loss(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-hard triplet loss: per anchor, its farthest positive and nearest negative.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Mean over anchors that
    have a positive and a negative; fraction = share of them with h > 0 (soft margin: with
    d_ap > d_an). O(B^2) time and memory.
    """
    labels, embeddings = _prepare(labels, embeddings)
    d = pairwise_distances(embeddings, squared)
    dtype = d.dtype
    d_const = tf.stop_gradient(d)
    pos, neg = _masks(labels)
    valid = tf.logical_and(tf.reduce_any(pos, axis=1), tf.reduce_any(neg, axis=1))
    # Indices, not reduce_max / reduce_min: the gradient goes to one element even when
    # distances tie. Fill values outside the masks cannot tie with a distance (d >= 0).
    far_pos = tf.argmax(tf.where(pos, d_const, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    inf = tf.constant(float("inf"), dtype)
    near_neg = tf.argmin(tf.where(neg, d_const, inf), axis=1, output_type=tf.int32)
    x = _rows_take(d_const, far_pos) - _rows_take(d_const, near_neg)
    items, coef, active = _items(x, tf.cast(margin, dtype), soft_margin)
    zero = tf.zeros_like(items)
    n = tf.reduce_sum(tf.cast(valid, tf.int64))
    coef = tf.where(valid, coef, zero) / tf.cast(tf.maximum(n, 1), dtype)
    # The exact gradient (+coef at the positive, -coef at the negative) as one scatter: the
    # backward pass of two [B] gathers from [B, B] costs ~2x more on CPU.
    index = tf.concat([_scatter_index(far_pos), _scatter_index(near_neg)], axis=0)
    grad = tf.scatter_nd(index, tf.concat([coef, -coef], axis=0), tf.shape(d))
    loss = _with_gradient(d, _ratio(tf.reduce_sum(tf.where(valid, items, zero)), n, dtype), grad)
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    return _nan_unless_finite(embeddings, loss, _ratio(n_active, n, dtype))


@LOSSES.register("semi_hard")
def semi_hard_triplet_loss(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Semi-hard triplet loss (FaceNet): per valid pair, the nearest negative farther than p.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). For each (a, p) with
    a != p, y_a = y_p, and a having a negative: the negative with the smallest d_an > d_ap,
    else the farthest negative. Mean over those pairs; fraction = share with h > 0 (soft
    margin: d_ap > d_an). Memory O(B^2); time O(B^2 * min(S, log B)).
    """
    labels, embeddings = _prepare(labels, embeddings)
    d = pairwise_distances(embeddings, squared)
    dtype = d.dtype
    d_const = tf.stop_gradient(d)
    blocks = _class_blocks(labels)
    margin = tf.cast(margin, dtype)
    total, n_active, grad = tf.cond(
        _use_slots(blocks, "semi_hard"),
        lambda: _semi_hard_slots(d_const, labels, margin, soft_margin, blocks),
        lambda: _semi_hard_sorted(d_const, labels, margin, soft_margin),
    )
    has_neg = blocks.n_pos + 1 < tf.shape(labels)[0]
    n_pairs = tf.reduce_sum(tf.where(has_neg, tf.cast(blocks.n_pos, tf.int64), 0))
    scale = tf.cast(tf.maximum(n_pairs, 1), dtype)
    loss = _with_gradient(d, _ratio(total, n_pairs, dtype), grad / scale)
    return _nan_unless_finite(embeddings, loss, _ratio(n_active, n_pairs, dtype))


# The strategies above, registered as mining.strategy names. A new strategy is a function
# like them, (labels, embeddings, margin, squared, soft_margin) -> (loss [], fraction []),
# registered with @LOSSES.register(name), plus conf/mining/<name>.yaml.
STRATEGIES = LOSSES.registered()


def triplet_loss(
    labels, embeddings, strategy="semi_hard", margin=0.5, squared=False, soft_margin=False
):
    """Dispatch to the loss of `strategy` (a name in LOSSES) -> (loss [], fraction [])."""
    loss = LOSSES.get(strategy)  # ConfigError naming the valid names
    return loss(labels, embeddings, margin=margin, squared=squared, soft_margin=soft_margin)
