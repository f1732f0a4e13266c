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
tiles the distances to [B*B, B]: 2 GB of float32 at B = 4096. No tensor here has more than
2 B^2 elements (the largest are [B, B], and semi-hard's [B, 2K] gradient pairs, K < B). Both
mining problems are, per anchor a, "where does each positive's threshold fall among a's
negatives":

* batch-all (hinge) needs, for each positive p, c(a,p) = #{n : d_an < d_ap + m}, and for each
  negative n, r(a,n) = #{p : d_ap + m > d_an}. Then the sum of the positive hinges is
  ``sum_p c(a,p) (d_ap + m) - sum_n r(a,n) d_an``: linear in d with integer coefficients,
  so its gradient is exact too (counts are piecewise constant).
* semi-hard needs, for each positive, the negative that follows d_ap in a's sorted negatives.

Three exact ways compute these integer results from distances without gradient:

1. Positive slots (fast when classes are small, e.g. PK batches with K = 4): group the batch
   by label so an anchor's positives are a contiguous run, and loop over the slot j = 0 ..
   max class size - 2: one [B, B] comparison of every anchor's j-th positive against all its
   negatives per step. Time O(B^2 * S), S = largest class size - 1; memory O(B^2).
2. Buckets (larger classes, e.g. a random sampler over 10 classes): sort only each anchor's
   positives ([B, K], K = S padded with +inf), then place every distance of the row among
   them with one ``tf.searchsorted`` over [B, B]: bucket(a, x) = number of a's thresholds
   below d_ax. Batch-all: r(a, n) = n_pos - bucket, and c = the cumulative per-row
   histogram of the buckets (``DenseBincount``), minus the anchor's own and positive columns
   (searched again, [B, K]). Semi-hard: bucket j holds the negatives in (d_a(j-1), d_aj],
   so one segment min per (anchor, bucket) (float32: of int64 keys, distance bits then
   column, so ties go to the lowest column as with argmin; float64: the minimum, then the
   lowest column holding it) and "first non-empty bucket after i" on [B, K] give every
   positive's negative; that [B, B] stage runs in chunks of rows, so its temporaries stay a
   few MB. Time O(B^2 log K), memory O(B^2); the search is the cost (branch mispredictions:
   ~40-60 ns per distance when the distances interleave with the thresholds, ~8 ns when
   they do not: random embeddings are semi-hard's slow case, clustered ones batch-all's).
   Ties follow the definitions: searchsorted's side="right" puts a negative exactly at a
   threshold above it (h = 0, not counted), side="left" puts one at exactly d_ap below p
   (not "farther").
3. One sort per row (only under XLA, whose static shapes the [B, K] tables of 2 do not
   have, and which lowers ``tf.searchsorted`` to a [B, B, K] comparison): sort, per anchor,
   the positives' thresholds and the negatives' distances together, as int64 keys whose
   last bit breaks ties the way the definition needs. Exclusive cumulative sums of the type
   flags give c and r; a stable partition gives the negatives in order. Time O(B^2 log B).

``_SLOT_LIMIT`` picks 1 or the other at run time (``tf.cond``), crossover measured on CPU;
``_large_class_engine`` picks 2 or 3 when tracing. Soft-margin batch-all cannot use counts
(softplus is not linear), so it always loops over slots, summing softplus and its
derivative per slot: O(B^2) memory, O(B^2 * S) time, which is O(B^3 / C) with C classes
of similar size: exact, but no faster for large classes.

Gradients: every loss computes, in the forward pass, both the value and its exact derivative
w.r.t. ``d`` and attaches it with ``tf.custom_gradient``: batch-all (hinge) is
``sum(w * d) + margin * count`` with the integer coefficients w, so its derivative is
w / count; the others put +h'(x) at (a, p) and -h'(x) at the chosen negative (summed per
slot for soft batch-all). Recording the loop or the gathers for the tape would keep O(B^2)
per loop step alive, or cost a slow [B, B] gather backward. First-order gradients only.

Distances use the Gram matrix; ``squared=False`` takes a square root that is masked at 0, so
coincident embeddings get a zero (finite) gradient instead of NaN, as in
omoindrot/tensorflow-triplet-loss.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tripletlab.registry import LOSSES

try:  # how tf_keras asks "am I being compiled by XLA?"; not public API
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
except ImportError:  # pragma: no cover - a TensorFlow without it: assume XLA, always correct
    GraphOrParentsInXlaContext = None

# Loop over positive slots while an anchor has at most this many positives; bucket (or, under
# XLA, sort) beyond. One slot costs 3-4 elementwise passes over [B, B]; the bucket engines
# cost about as much as 10-40 of them. Crossovers measured at B = 256 and 1024 with K = 4,
# 8, 16, 32 images per class, random and clustered embeddings (fwd + bwd, 2 CPU cores): P x 4
# batches (3 positives) stay on slots. All engines give identical results: this only moves
# time.
_SLOT_LIMIT = {"batch_all": 4, "semi_hard": 5}

# Semi-hard's bucket stage runs over chunks of rows with about this many distances: its
# temporaries (mask, distances, buckets, segment ids, int64 keys: ~25 bytes per distance)
# then take ~6 MB per chunk in flight instead of ~25 B^2 bytes (400 MB at B = 4096). B <= 512
# is one chunk; the loop costs nothing measurable at larger B.
_CHUNK_ELEMENTS = 2**18

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


def _with_gradient(d: tf.Tensor, value: tf.Tensor, grad_d: tf.Tensor, scale=None) -> tf.Tensor:
    """value (a scalar computed without gradient), differentiable w.r.t. d with d value/d d
    = grad_d [B, B] (times the scalar `scale`, if given: one pass over [B, B] fewer). Used
    where the forward pass already produced the exact gradient and recording it op by op
    would keep O(B^2) per loop step alive for the backward pass."""

    @tf.custom_gradient
    def attach(x):
        def backward(upstream):
            if scale is not None:
                upstream = upstream * scale
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
    # The negatives sorted before p are those with d_an <= d_ap; the next one is the pick
    # (equal keys keep column order: the lowest column, as argmin in the slot loop), else the
    # farthest one (argmax: the lowest column among equals too, as in the other engines).
    rank = tf.clip_by_value(neg_before, 0, tf.maximum(n_neg - 1, 0))
    chosen = tf.gather(neg_by_rank, rank, batch_dims=1)
    farthest = tf.argmax(tf.where(neg, d, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    chosen = tf.where(neg_before < n_neg, chosen, farthest[:, None])
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


def _positives_by_distance(d, blocks: _Blocks):
    """Every anchor's positives sorted by distance, padded to the largest class.

    d [B, B] (no gradient). Returns (d_ap [B, K] ascending, +inf in the padding; their
    columns [B, K] int32, the anchor's own index in the padding; exists [B, K] bool, which
    is the prefix j < n_pos; K = max(largest number of positives, 1)). O(B K log K).
    """
    b = tf.shape(d)[0]
    k = tf.maximum(tf.reduce_max(blocks.n_pos), 1)
    j = tf.range(k)[None, :]
    exists = j < blocks.n_pos[:, None]
    place = blocks.start[:, None] + j + tf.cast(j >= blocks.self_rank[:, None], tf.int32)
    cols = tf.gather(blocks.order, tf.where(exists, place, 0))
    cols = tf.where(exists, cols, tf.range(b)[:, None])
    inf = tf.constant(float("inf"), d.dtype)
    d_ap = tf.where(exists, tf.gather(d, cols, batch_dims=1), inf)
    top = tf.math.top_k(-d_ap, k=k, sorted=True)  # descending -d: ascending d, inf last
    return -top.values, tf.gather(cols, top.indices, batch_dims=1), exists, k


def _flat_index(cols: tf.Tensor) -> tf.Tensor:
    """cols [B, N] column per (row, slot) -> [B * N] indices into the flattened [B, B]."""
    b = tf.shape(cols)[0]
    return tf.reshape(cols + tf.range(b)[:, None] * b, [-1])


def _to_matrix(values: tf.Tensor, cols: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Sum values [B, N] into a [B, B] matrix at (row, cols[row, j]); duplicates add up.

    unsorted_segment_sum over flat indices: on CPU 3x faster than scatter_nd for B x K
    updates."""
    flat = tf.math.unsorted_segment_sum(tf.reshape(values, [-1]), _flat_index(cols), b * b)
    return tf.reshape(flat, [b, b])


def _segment_argmin(values: tf.Tensor, ids: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Column of the smallest value per segment, the lowest column among equal values.

    values [R, B] float (R rows of B columns), ids [R, B] int32 segment of each entry (< n).
    Returns [n] int32, >= B for an empty segment. float32: one segment min over int64 keys: the float64 bits
    of a float32 value have 29 low zero bits, which hold the column (B < 2^29), and the bits
    of non-negative floats sort like their values (negative ones stay below them). float64
    has no spare bits: the minimum, then the lowest column holding it.
    """
    b = tf.shape(values)[1]
    if values.dtype == tf.float32:
        bits = tf.bitcast(tf.cast(values, tf.float64), tf.int64)
        keys = bits + tf.cast(tf.range(b), tf.int64)[None, :]
        best = tf.math.unsorted_segment_min(keys, ids, n)  # empty: int64 max
        return tf.cast(tf.bitwise.bitwise_and(best, 2**29 - 1), tf.int32)  # empty: 2^29 - 1
    smallest = tf.math.unsorted_segment_min(values, ids, n)
    at_min = tf.equal(values, tf.gather(smallest, ids))
    return tf.math.unsorted_segment_min(tf.where(at_min, tf.range(b)[None, :], b), ids, n)


def _row_histogram(values: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """values [B, N] int32 -> [B, size] counts of 0 .. size - 1 per row; larger values are
    not counted. The raw op: tf.math.bincount adds a pass over the input for its maximum."""
    no_weights = tf.zeros([0], tf.int32)
    return tf.raw_ops.DenseBincount(input=values, size=size, weights=no_weights)


def _batch_all_buckets(d, margin, blocks: _Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Same contract as :func:`_batch_all_slots`, by bucketing every distance among the
    anchor's sorted thresholds. O(B^2 log K) time, O(B^2) memory.

    bucket(a, x) = #{p : d_ap + m <= d_ax}. For a negative n, r(a, n) = n_pos - bucket (the
    thresholds above d_an). For the j-th smallest threshold, c = #{n : bucket(a, n) <= j}: a
    cumulative histogram. Tied thresholds leave the buckets between them empty, so they get
    the same c; a negative exactly at a threshold is in the bucket above it (h = 0, not
    counted).
    """
    b = tf.shape(d)[0]
    d_ap, cols, exists, k = _positives_by_distance(d, blocks)
    threshold = d_ap + margin  # ascending; the +inf padding is above every distance
    bucket = tf.searchsorted(threshold, d, side="right", out_type=tf.int32)  # [B, B]
    hist = _row_histogram(bucket, k + 1)
    # The histogram counted every column: take out the anchor's positives and itself, with
    # the buckets of the same distances (searched again: [B, K + 1], not [B, B]).
    own_d = tf.concat([d_ap, tf.linalg.diag_part(d)[:, None]], axis=1)
    own_cols = tf.concat([cols, tf.range(b)[:, None]], axis=1)
    own_exists = tf.concat([exists, tf.ones([b, 1], tf.bool)], axis=1)
    own_bucket = tf.searchsorted(threshold, own_d, side="right", out_type=tf.int32)
    dropped = tf.where(own_exists, own_bucket, k + 1)  # k + 1: past maxlength, not counted
    hist -= _row_histogram(dropped, k + 1)
    c = tf.where(exists, tf.cumsum(hist[:, :k], axis=1), 0)
    count = tf.reduce_sum(tf.cast(c, tf.int64))
    # w = bucket - n_pos = -r everywhere, then corrected at the positives (to c) and on the
    # diagonal (to 0) with one sparse [B, K + 1] sum instead of a [B, B] mask.
    n_pos = blocks.n_pos[:, None]
    wanted = tf.concat([c, tf.zeros([b, 1], tf.int32)], axis=1)
    correction = tf.where(own_exists, wanted - (own_bucket - n_pos), 0)
    w = bucket - n_pos + _to_matrix(correction, own_cols, b)
    return tf.cast(w, d.dtype), count


def _nearest_in_buckets(d, labels, d_ap, k) -> tuple[tf.Tensor, tf.Tensor]:
    """Semi-hard's [B, B] stage: the nearest negative in every (anchor, bucket).

    d [B, B] (no gradient), labels [B], d_ap [B, K] each anchor's positive distances,
    ascending. Returns (nearest [B, K + 1] int32: column of the nearest negative in bucket
    j = #{p : d_ap < d_an}, >= B when the bucket is empty; farthest [B] int32: the farthest
    negative, the lowest column among equals, 0 for an anchor without negatives). Chunks of
    rows, one after the other (two in flight: their searches, single-threaded ops, can share
    two cores): the temporaries are those of one chunk, not [B, B] ones.
    """
    b = tf.shape(d)[0]
    chunk = tf.maximum(_CHUNK_ELEMENTS // b, 1)
    n_chunks = (b + chunk - 1) // chunk

    def body(i, nearest, farthest):
        start = i * chunk
        stop = tf.minimum(start + chunk, b)
        n = stop - start
        neg = tf.not_equal(labels[start:stop, None], labels[None, :])
        neg_d = tf.where(neg, d[start:stop], -tf.ones([], d.dtype))  # non-negatives: below all
        bucket = tf.searchsorted(d_ap[start:stop], neg_d, side="left", out_type=tf.int32)
        ids = bucket + tf.range(n)[:, None] * (k + 1)
        nearest = nearest.write(i, tf.reshape(_segment_argmin(neg_d, ids, n * (k + 1)), [n, -1]))
        farthest = farthest.write(i, tf.argmax(neg_d, axis=1, output_type=tf.int32))
        return i + 1, nearest, farthest

    arrays = [tf.TensorArray(tf.int32, size=n_chunks, infer_shape=False) for _ in range(2)]
    _, nearest, farthest = tf.while_loop(
        lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays), parallel_iterations=2
    )
    return tf.reshape(nearest.concat(), [b, k + 1]), tf.reshape(farthest.concat(), [b])


def _semi_hard_buckets(d, labels, margin, soft_margin, blocks: _Blocks):
    """Same contract as :func:`_semi_hard_slots`, by bucketing every negative among the
    anchor's sorted positives. O(B^2 log K) time, O(B^2) memory.

    bucket(a, n) = #{p : d_ap < d_an}: n is farther than exactly the `bucket` nearest
    positives. Bucket j >= 1 lies in (d_a(j-1), d_a(j)], so bucket minima increase with j,
    and the nearest negative farther than the i-th positive is the minimum of the first
    non-empty bucket j > i (none: the farthest negative). A negative at exactly d_ap is in
    bucket <= i, so it is not "farther". The minimum per (anchor, bucket) is one segment
    min over [B, B]; the lowest column wins ties, as argmin does in the slot loop.
    """
    b = tf.shape(d)[0]
    rows = tf.range(b)
    d_ap, cols, exists, k = _positives_by_distance(d, blocks)
    nearest, farthest = _nearest_in_buckets(d, labels, d_ap, k)
    has_neg = blocks.n_pos + 1 < b
    nearest = nearest[:, 1:]  # bucket 0: nearer than every positive
    # Column i of `nearest` is bucket i + 1. Cut each row into runs: empty buckets up to and
    # including the next non-empty one. Every bucket of a run answers with that one.
    non_empty = nearest < b
    run = tf.cumsum(tf.cast(non_empty, tf.int32), axis=1, exclusive=True) + rows[:, None] * k
    first = tf.math.unsorted_segment_min(tf.reshape(nearest, [-1]), tf.reshape(run, [-1]), b * k)
    chosen = tf.gather(first, run)  # [B, K]: >= B when no negative is farther
    found = chosen < b
    pick = tf.where(found, chosen, farthest[:, None])

    items, coef, active = _items(d_ap - tf.gather(d, pick, batch_dims=1), margin, soft_margin)
    valid = tf.logical_and(exists, has_neg[:, None])
    zero = tf.zeros_like(items)
    total = tf.reduce_sum(tf.where(valid, items, zero))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    coef = tf.where(valid, coef, zero)
    # +coef at (a, p), -coef at (a, chosen); several positives may share a negative.
    grad = _to_matrix(tf.concat([coef, -coef], 1), tf.concat([cols, pick], 1), b)
    return total, n_active, grad


def _use_slots(blocks: _Blocks, strategy: str) -> tf.Tensor:
    return tf.reduce_max(blocks.n_pos) <= _SLOT_LIMIT[strategy]


def _in_xla_context() -> bool:
    """True while tracing for XLA (``jit_compile=True``, also from an enclosing function)."""
    if GraphOrParentsInXlaContext is None:  # pragma: no cover
        return True
    return GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _large_class_engine() -> str:
    """Engine for batches with large classes: "buckets", or "sorted" under XLA.

    The bucket engine's [B, K] shapes depend on the labels, which XLA cannot compile (and it
    would lower tf.searchsorted to a [B, B, K] comparison); the row sort has static shapes.
    """
    return "sorted" if _in_xla_context() else "buckets"


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
        scale = 1 / tf.cast(tf.maximum(n_valid, 1), dtype)
        loss = _with_gradient(d, _ratio(total, n_valid, dtype), grad, scale)
        return _nan_unless_finite(embeddings, loss, _ratio(n_violating, n_valid, dtype))

    margin = tf.cast(margin, dtype)

    def large():
        if _large_class_engine() == "sorted":
            return _batch_all_sorted(d_const, labels, margin)
        return _batch_all_buckets(d_const, margin, blocks)

    w, count = tf.cond(
        _use_slots(blocks, "batch_all"),
        lambda: _batch_all_slots(d_const, labels, margin, blocks),
        large,
    )
    # A flat dot product: no [B, B] temporary for w * d. The gradient w.r.t. d is w / count,
    # attached directly: the tape's gradient of the dot product is a slow outer product.
    total = tf.tensordot(tf.reshape(w, [-1]), tf.reshape(d_const, [-1]), 1)
    total += margin * tf.cast(count, dtype)
    scale = 1 / tf.cast(tf.maximum(count, 1), dtype)
    loss = _with_gradient(d, _ratio(total, count, dtype), w, scale)
    return _nan_unless_finite(embeddings, loss, _ratio(count, n_valid, dtype))


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

    def large():
        if _large_class_engine() == "sorted":
            return _semi_hard_sorted(d_const, labels, margin, soft_margin)
        return _semi_hard_buckets(d_const, labels, margin, soft_margin, blocks)

    total, n_active, grad = tf.cond(
        _use_slots(blocks, "semi_hard"),
        lambda: _semi_hard_slots(d_const, labels, margin, soft_margin, blocks),
        large,
    )
    has_neg = blocks.n_pos + 1 < tf.shape(labels)[0]
    n_pairs = tf.reduce_sum(tf.where(has_neg, tf.cast(blocks.n_pos, tf.int64), 0))
    scale = 1 / tf.cast(tf.maximum(n_pairs, 1), dtype)
    loss = _with_gradient(d, _ratio(total, n_pairs, dtype), grad, scale)
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
