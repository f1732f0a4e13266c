"""The exact mining engines of batch-all and semi-hard: integer results from distances
without gradient, in O(B N) memory (N = B columns, or B + M with a cross-batch memory).

Both problems are, per anchor a, "where does each positive's threshold fall among a's
negatives":

* batch-all (hinge) needs, for each positive p, c(a,p) = #{n : d_an < d_ap + m}, and for each
  negative n, r(a,n) = #{p : d_ap + m > d_an}. Then the sum of the positive hinges is
  ``sum_p c(a,p) (d_ap + m) - sum_n r(a,n) d_an``: linear in d with integer coefficients,
  so its gradient is exact too (counts are piecewise constant).
* semi-hard needs, for each positive, the negative that follows d_ap in a's sorted negatives.

Three exact ways compute them; every one gives the same numbers and picks:

1. ``slots`` (fast when classes are small, e.g. PK batches with K = 4): group the columns by
   label so an anchor's positives are a contiguous run, and loop over the slot j = 0 ..
   max class size - 2: one [B, N] comparison of every anchor's j-th positive against all its
   negatives per step. Time O(B N S), S = largest class size - 1; memory O(B N).
2. ``buckets`` (larger classes, e.g. a random sampler over 10 classes): sort only each
   anchor's positives ([B, K], K = S padded with +inf), then place every distance of the row
   among them with one ``tf.searchsorted`` over [B, N]: bucket(a, x) = number of a's
   thresholds below d_ax. Batch-all: r(a, n) = n_pos - bucket, and c = the cumulative
   per-row histogram of the buckets (``DenseBincount``), minus the anchor's own and positive
   columns (searched again, [B, K]). Semi-hard: bucket j holds the negatives in
   (d_a(j-1), d_aj], so one segment min per (anchor, bucket) (float32: of int64 keys,
   distance bits then column, so ties go to the lowest column as with argmin; float64: the
   minimum, then the lowest column holding it) and "first non-empty bucket after i" on
   [B, K] give every positive's negative; that [B, N] stage runs in chunks of rows, so its
   temporaries stay a few MB. Time O(B N log K); the search is the cost (branch
   mispredictions: ~40-60 ns per distance when the distances interleave with the
   thresholds, ~8 ns when they do not). Ties follow the definitions: searchsorted's
   side="right" puts a negative exactly at a threshold above it (h = 0, not counted),
   side="left" puts one at exactly d_ap below p (not "farther"). Its [B, K] shapes depend on
   the labels, which XLA cannot compile.
3. ``native``: the bucket engine's algorithm in one C++ pass per anchor (losses/native.py
   and native_mining.cc, built on first use); same integers, not under XLA.
4. ``sorted`` (for XLA, which needs static shapes and lowers ``tf.searchsorted`` to a
   [B, N, K] comparison): sort, per anchor, the positives' thresholds and the negatives'
   distances together, as int64 keys whose last bit breaks ties the way the definition
   needs. Exclusive cumulative sums of the type flags give c and r; a stable partition gives
   the negatives in order. Time O(B N log N).

``engine="auto"`` runs native wherever :func:`tripletlab.losses.native.runs` says
(measured faster than the slot loop even at P x 4). Elsewhere it loops over slots while every anchor has at most
:data:`SLOT_LIMIT` positives (a ``tf.cond`` at run time, crossover measured on CPU), else
buckets, or the row sort when the caller says it compiles with XLA (``jit_compile=True``). Soft-margin
batch-all cannot use counts (softplus is not linear), so it always loops over slots.

Every engine but ``sorted`` mines each row on its own: row a is the anchor in column
``blocks.own[a]``, so losses/blocked.py runs them on blocks of rows (:func:`mining_form`):
one block of all rows up to DENSE_ELEMENTS distances.
"""

from __future__ import annotations

import tensorflow as tf

from tripletlab.losses import native
from tripletlab.losses.pieces import (
    Blocks,
    flag,
    invert_rows,
    items,
    masks,
    negatives,
    positive_columns,
    row_histogram,
    rows_and_columns,
    rows_take,
    scatter_index,
    segment_argmin,
    semi_hard_items,
    slot,
    sort_keys,
    sort_rows,
    to_matrix,
)

ENGINES = ("auto", "slots", "buckets", "native", "sorted", "dense", "blocked")
MINING_ENGINES = ENGINES[:5]  # batch-all and semi-hard; the last two: batch-hard, easy-positive

# Every strategy mines all B rows at once ([B, N]: "dense" for batch-hard and easy-positive,
# one block in losses/blocked.py for the others) while B N <= DENSE_ELEMENTS, else blocks of
# about BLOCK_ELEMENTS ("blocked": O(BLOCK) memory, the block stays in cache). Measured side
# by side, fwd + bwd, 2 EPYC cores, quiet
# (docs/losses.md): dense was as fast or faster up to [2048, 2048] and [512, 4608] (a 16 MB
# float32 matrix); at [4096, 4096] (64 MB a matrix) blocked is 3x ahead of the dense TF form.
DENSE_ELEMENTS = 2**22
BLOCK_ELEMENTS = 2**18

# Loop over positive slots while an anchor has at most this many positives; bucket (or, under
# XLA, sort) beyond. One slot costs 3-4 elementwise passes over [B, N]; the bucket engines
# cost about as much as 10-40 of them. Crossovers measured at B = 256 and 1024 with K = 4,
# 8, 16, 32 images per class, random and clustered embeddings (fwd + bwd, 2 CPU cores): P x 4
# batches (3 positives) stay on slots. All engines give identical results: this only moves
# time.
SLOT_LIMIT = {"batch_all": 4, "semi_hard": 5}

# Semi-hard's bucket stage runs over chunks of rows with about this many distances: its
# temporaries (mask, distances, buckets, segment ids, int64 keys: ~25 bytes per distance)
# then take ~6 MB per chunk in flight instead of ~25 B N bytes. B N <= 2^18 is one chunk.
CHUNK_ELEMENTS = 2**18

# Key of the anchor itself in the row sort: after every distance key, and odd like a
# negative's key, so the flag tests below exclude it explicitly.
_LAST = tf.int64.max


def check_engine(engine: str, jit_compile: bool) -> str:
    """``engine`` if valid with ``jit_compile``, else ValueError naming the valid ones."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not valid; choose one of: {', '.join(ENGINES)}")
    if engine == "buckets" and jit_compile:
        raise ValueError(
            "engine='buckets' cannot compile with XLA (its shapes depend on the labels); "
            "use 'auto' or 'sorted' with jit_compile=True"
        )
    if engine == "blocked" and jit_compile:  # its last block is shorter: not a static shape
        raise ValueError("engine='blocked' cannot compile with XLA; use 'auto' or 'dense'")
    if engine == "native" and jit_compile:
        raise ValueError(
            "engine='native' cannot compile with XLA (a custom op); use 'auto' or 'sorted' "
            "with jit_compile=True"
        )
    return engine


def one_pick_engine(b, n, engine: str = "auto", jit_compile: bool = False) -> str | None:
    """Batch-hard / easy-positive's form for [b, n]: "dense", "blocked", or None when b or n
    is unknown (decided at run time by the same rule). "dense" / "blocked" force it; the
    mining engines ("slots", ...) mean "auto". Under XLA "dense" (static shapes)."""
    check_engine(engine, jit_compile)
    if engine in ("dense", "blocked"):
        return engine
    if jit_compile:
        return "dense"
    if b is None or n is None:
        return None
    return "dense" if b * n <= DENSE_ELEMENTS else "blocked"


def auto_engine(
    strategy, b, n, most_positives, jit_compile=False, soft_margin=False, dtype=tf.float32
) -> str:
    """The engine "auto" runs for ``strategy`` on b anchors, n columns, at most
    ``most_positives`` positives per anchor (``bench losses`` shows it); "-": only one."""
    if strategy in ("batch_hard", "easy_positive"):
        return one_pick_engine(b, n, "auto", jit_compile)
    if strategy not in SLOT_LIMIT:
        return "-"
    if soft_margin and strategy == "batch_all":  # softplus is not linear: only slots
        name = "slots"
    elif native.runs(jit_compile, dtype):
        name = "native"
    elif most_positives <= SLOT_LIMIT[strategy]:
        name = "slots"
    else:
        name = "sorted" if jit_compile else "buckets"
    blocks = mining_form(name, jit_compile) == "blocked" and b * n > DENSE_ELEMENTS
    return f"blocked {name}" if blocks else name


def mining_form(engine: str = "auto", jit_compile: bool = False) -> str:
    """Batch-all / semi-hard's form: "blocked" (losses/blocked.py: the gradient by hand, in
    blocks of :func:`mining_block_rows` rows, one block while B N <= DENSE_ELEMENTS), or
    "dense" (strategies.py: autodiff through one [B, N] matrix) under XLA and for the row
    sort, which need static shapes and the rows in column order. Measured side by side at
    B = 1024 (2 EPYC cores, fwd + bwd, docs/losses.md): one block took 20-35% less time than
    the dense form, with every engine; the hand-written gradient skips autodiff's [B, N]
    passes."""
    return "dense" if engine == "sorted" or jit_compile else "blocked"


def block_rows(n):
    """Anchors per block of the blocked batch-hard / easy-positive for n columns (int or
    scalar tensor): about BLOCK_ELEMENTS / n, >= 1."""
    return tf.maximum(BLOCK_ELEMENTS // n, 1)


def mining_block_rows(b, n):
    """Anchors per block of the blocked batch-all / semi-hard (b anchors, n columns; int or
    scalar tensors): all b while b n <= DENSE_ELEMENTS, else :func:`block_rows`."""
    one_block = tf.cast(b, tf.int64) * tf.cast(n, tf.int64) <= DENSE_ELEMENTS
    return tf.where(one_block, tf.cast(b, tf.int32), tf.cast(block_rows(n), tf.int32))


def choose(strategy, blocks: Blocks, engine, jit_compile, run, dtype=tf.float32) -> tuple:
    """Run ``run(name)`` for the engine ``engine`` names; "auto" decides at run time."""
    check_engine(engine, jit_compile)
    if engine not in MINING_ENGINES:
        raise ValueError(
            f"engine={engine!r} is for batch_hard / easy_positive; {strategy} mines with one "
            f"of: {', '.join(MINING_ENGINES)}"
        )
    if engine != "auto":
        return run(engine)
    if native.runs(jit_compile, dtype):
        return run("native")
    large = "sorted" if jit_compile else "buckets"
    small_classes = tf.reduce_max(blocks.n_pos) <= SLOT_LIMIT[strategy]
    return tf.cond(small_classes, lambda: run("slots"), lambda: run(large))


# --------------------------------------------------------------------------------------------
# Batch-all (hinge): coefficients w [B, N] and the count of positive hinges
# --------------------------------------------------------------------------------------------


def batch_all_slots(d, labels, margin, blocks: Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-all hinge coefficients by positive slots.

    d [B, N] (no gradient), labels [N]. Returns (w [B, N] dtype of d, count [] int64):
    w[a, p] = c(a, p) for positives, w[a, n] = -r(a, n) for negatives, 0 elsewhere, and
    count = sum of c, so that the sum of the positive hinges = sum(w * d) + margin * count.
    O(B N S) time, O(B N) memory.
    """
    neg = negatives(labels, blocks.own)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)  # non-negatives are never below a threshold

    def body(j, w, count):
        col, exists = slot(j, blocks)
        threshold = tf.where(exists, rows_take(d, col) + margin, -inf)
        below = tf.cast(neg_d < threshold[:, None], d.dtype)  # [B, N]: h(a, p_j, n) > 0
        c = tf.reduce_sum(below, axis=1)
        w = tf.tensor_scatter_nd_add(w - below, scatter_index(col), c)
        return j + 1, w, count + tf.reduce_sum(tf.cast(c, tf.int64))

    n_slots = tf.reduce_max(blocks.n_pos)
    _, w, count = tf.while_loop(
        lambda j, w, count: j < n_slots,
        body,
        (tf.constant(0), tf.zeros_like(d), tf.constant(0, tf.int64)),
    )
    return w, count


def batch_all_sorted(d, labels, margin) -> tuple[tf.Tensor, tf.Tensor]:
    """Same contract as :func:`batch_all_slots`, with one sort per row. O(B N log N)."""
    pos, neg = masks(labels, tf.shape(d)[0])
    threshold = d + margin
    # Flag 0 for positives: at equal keys a positive's threshold sorts before the negative,
    # so that negative is not counted (its h is exactly 0). Thresholds <= 0 (margin < 0)
    # are below every distance anyway: clamp them to +0.0, whose bits sort first.
    pos_key = sort_keys(tf.where(threshold > 0, threshold, tf.zeros_like(threshold)))
    keys = tf.where(pos, pos_key, tf.where(neg, sort_keys(d) + 1, _LAST))
    keys, order = sort_rows(keys)
    is_pos = tf.logical_not(flag(keys))
    is_neg = tf.logical_and(flag(keys), tf.not_equal(keys, _LAST))
    neg_before = tf.cumsum(tf.cast(is_neg, tf.int32), axis=1, exclusive=True)  # c at a p
    pos_after = tf.cumsum(tf.cast(is_pos, tf.int32), axis=1, exclusive=True, reverse=True)
    zero = tf.zeros_like(neg_before)
    w = tf.where(is_pos, neg_before, tf.where(is_neg, -pos_after, zero))
    count = tf.reduce_sum(tf.cast(tf.where(is_pos, neg_before, zero), tf.int64))
    w = tf.gather(w, invert_rows(order), batch_dims=1)  # back to column order
    return tf.cast(w, d.dtype), count


def positives_by_distance(d, blocks: Blocks):
    """Every anchor's positives sorted by distance, padded to the largest class.

    d [B, N] (no gradient). Returns (d_ap [B, K] ascending, +inf in the padding; their
    columns [B, K] int32, the anchor's own column in the padding; exists [B, K] bool, which
    is the prefix j < n_pos; K = max(largest number of positives, 1)). O(B K log K).
    """
    k = tf.maximum(tf.reduce_max(blocks.n_pos), 1)
    cols, exists = positive_columns(blocks, k)
    inf = tf.constant(float("inf"), d.dtype)
    d_ap = tf.where(exists, tf.gather(d, cols, batch_dims=1), inf)
    top = tf.math.top_k(-d_ap, k=k, sorted=True)  # descending -d: ascending d, inf last
    return -top.values, tf.gather(cols, top.indices, batch_dims=1), exists, k


def batch_all_buckets(d, margin, blocks: Blocks) -> tuple[tf.Tensor, tf.Tensor]:
    """Same contract as :func:`batch_all_slots`, by bucketing every distance among the
    anchor's sorted thresholds. O(B N log K) time, O(B N) memory.

    bucket(a, x) = #{p : d_ap + m <= d_ax}. For a negative n, r(a, n) = n_pos - bucket (the
    thresholds above d_an). For the j-th smallest threshold, c = #{n : bucket(a, n) <= j}: a
    cumulative histogram. Tied thresholds leave the buckets between them empty, so they get
    the same c; a negative exactly at a threshold is in the bucket above it (h = 0, not
    counted).
    """
    b, n = rows_and_columns(d)
    d_ap, cols, exists, k = positives_by_distance(d, blocks)
    threshold = d_ap + margin  # ascending; the +inf padding is above every distance
    bucket = tf.searchsorted(threshold, d, side="right", out_type=tf.int32)  # [B, N]
    hist = row_histogram(bucket, k + 1)
    # The histogram counted every column: take out the anchor's positives and itself, with
    # the buckets of the same distances (searched again: [B, K + 1], not [B, N]).
    own_d = tf.concat([d_ap, rows_take(d, blocks.own)[:, None]], axis=1)
    own_cols = tf.concat([cols, blocks.own[:, None]], axis=1)
    own_exists = tf.concat([exists, tf.ones([b, 1], tf.bool)], axis=1)
    own_bucket = tf.searchsorted(threshold, own_d, side="right", out_type=tf.int32)
    dropped = tf.where(own_exists, own_bucket, k + 1)  # k + 1: past maxlength, not counted
    hist -= row_histogram(dropped, k + 1)
    c = tf.where(exists, tf.cumsum(hist[:, :k], axis=1), 0)
    count = tf.reduce_sum(tf.cast(c, tf.int64))
    # w = bucket - n_pos = -r everywhere, then corrected at the positives (to c) and on the
    # diagonal (to 0) with one sparse [B, K + 1] sum instead of a [B, N] mask.
    n_pos = blocks.n_pos[:, None]
    wanted = tf.concat([c, tf.zeros([b, 1], tf.int32)], axis=1)
    correction = tf.where(own_exists, wanted - (own_bucket - n_pos), 0)
    w = bucket - n_pos + to_matrix(correction, own_cols, n)
    return tf.cast(w, d.dtype), count


# --------------------------------------------------------------------------------------------
# Semi-hard: (sum of the items, number active, d sum / d d [B, N])
# --------------------------------------------------------------------------------------------


def semi_hard_slots(d, labels, margin, soft_margin, blocks: Blocks):
    """Semi-hard loss sum and its gradient, by positive slots.

    d [B, N] (no gradient), labels [N]. Returns (sum of the items over valid pairs [],
    number of active items [] int64, d sum / d d [B, N]). The gradient is accumulated per
    slot (+coef at (a, p), -coef at the chosen negative), so no [B, N] gather of the chosen
    negatives, nor its backward pass, is needed. O(B N S) time, O(B N) memory.
    """
    neg = negatives(labels, blocks.own)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)
    farthest = tf.argmax(tf.where(neg, d, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    d_farthest = rows_take(d, farthest)
    has_neg = blocks.n_pos + 1 < tf.shape(d)[1]

    def body(j, total, n_active, grad):
        col, exists = slot(j, blocks)
        d_ap = rows_take(d, col)
        farther = tf.where(neg_d > d_ap[:, None], neg_d, inf)  # strictly farther negatives
        nearest = tf.argmin(farther, axis=1, output_type=tf.int32)
        d_nearest = rows_take(farther, nearest)
        found = d_nearest < inf
        pick = tf.where(found, nearest, farthest)
        values, coef, active = items(
            d_ap - tf.where(found, d_nearest, d_farthest), margin, soft_margin
        )
        valid = tf.logical_and(exists, has_neg)
        zero = tf.zeros_like(values)
        total += tf.reduce_sum(tf.where(valid, values, zero))
        n_active += tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
        coef = tf.where(valid, coef, zero)
        index = tf.concat([scatter_index(col), scatter_index(pick)], axis=0)
        grad = tf.tensor_scatter_nd_add(grad, index, tf.concat([coef, -coef], axis=0))
        return j + 1, total, n_active, grad

    n_slots = tf.reduce_max(blocks.n_pos)
    init = (tf.constant(0), tf.zeros([], d.dtype), tf.constant(0, tf.int64), tf.zeros_like(d))
    _, total, n_active, grad = tf.while_loop(lambda j, *_: j < n_slots, body, init)
    return total, n_active, grad


def semi_hard_sorted(d, labels, margin, soft_margin):
    """Same contract as :func:`semi_hard_slots`, with one sort per row. O(B N log N)."""
    b, n = rows_and_columns(d)
    pos, neg = masks(labels, b)
    # Flag 0 for negatives: one at exactly d_ap sorts before p, so it is not "farther".
    keys = sort_keys(d)
    keys = tf.where(neg, keys, tf.where(pos, keys + 1, _LAST))
    keys, order = sort_rows(keys)
    is_neg = tf.logical_not(flag(keys))
    neg_before = tf.cumsum(tf.cast(is_neg, tf.int32), axis=1, exclusive=True)
    n_neg = tf.reduce_sum(tf.cast(neg, tf.int32), axis=1, keepdims=True)
    # Stable partition of the sorted row, negatives first: its inverse lists the sorted
    # positions of the negatives, nearest first, i.e. the sorted negatives of each anchor.
    k = tf.range(n)[None, :]
    dest = tf.where(is_neg, neg_before, n_neg + k - neg_before)
    neg_by_rank = tf.gather(order, invert_rows(dest), batch_dims=1)  # columns, nearest first
    # The negatives sorted before p are those with d_an <= d_ap; the next one is the pick
    # (equal keys keep column order: the lowest column, as argmin in the slot loop), else the
    # farthest one (argmax: the lowest column among equals too, as in the other engines).
    rank = tf.clip_by_value(neg_before, 0, tf.maximum(n_neg - 1, 0))
    chosen = tf.gather(neg_by_rank, rank, batch_dims=1)
    farthest = tf.argmax(tf.where(neg, d, -tf.ones_like(d)), axis=1, output_type=tf.int32)
    chosen = tf.where(neg_before < n_neg, chosen, farthest[:, None])
    chosen = tf.gather(chosen, invert_rows(order), batch_dims=1)  # back to column order

    valid = tf.logical_and(pos, n_neg > 0)
    values, coef, active = items(d - tf.gather(d, chosen, batch_dims=1), margin, soft_margin)
    zero = tf.zeros_like(values)
    total = tf.reduce_sum(tf.where(valid, values, zero))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    coef = tf.where(valid, coef, zero)
    # d x / d d(a, p) = 1 and d x / d d(a, chosen) = -1; several p may share a negative.
    return total, n_active, coef - to_matrix(coef, chosen, n)


def _nearest_in_buckets(d, labels, own, d_ap, k, chunk_elements) -> tuple[tf.Tensor, tf.Tensor]:
    """Semi-hard's [B, N] stage: the nearest negative in every (anchor, bucket).

    d [B, N] (no gradient), labels [N], own [B] the anchors' columns, d_ap [B, K] their
    positive distances, ascending. Returns (nearest [B, K + 1] int32: column of the nearest
    negative in bucket j = #{p : d_ap < d_an}, >= N when the bucket is empty; farthest [B]
    int32: the farthest negative, the lowest column among equals, 0 for an anchor without
    negatives). Chunks of rows, one after the other (two in flight: their searches,
    single-threaded ops, can share two cores): the temporaries are those of one chunk.
    """
    b, n = rows_and_columns(d)
    chunk = tf.maximum(chunk_elements // n, 1)
    n_chunks = (b + chunk - 1) // chunk

    def body(i, nearest, farthest):
        start = i * chunk
        stop = tf.minimum(start + chunk, b)
        rows = stop - start
        neg = negatives(labels, own[start:stop])
        neg_d = tf.where(neg, d[start:stop], -tf.ones([], d.dtype))  # non-negatives: below all
        bucket = tf.searchsorted(d_ap[start:stop], neg_d, side="left", out_type=tf.int32)
        ids = bucket + tf.range(rows)[:, None] * (k + 1)
        found = segment_argmin(neg_d, ids, rows * (k + 1))
        nearest = nearest.write(i, tf.reshape(found, [rows, -1]))
        farthest = farthest.write(i, tf.argmax(neg_d, axis=1, output_type=tf.int32))
        return i + 1, nearest, farthest

    arrays = [tf.TensorArray(tf.int32, size=n_chunks, infer_shape=False) for _ in range(2)]
    _, nearest, farthest = tf.while_loop(
        lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays), parallel_iterations=2
    )
    return tf.reshape(nearest.concat(), [b, k + 1]), tf.reshape(farthest.concat(), [b])


def semi_hard_buckets(d, labels, margin, soft_margin, blocks: Blocks):
    """Same contract as :func:`semi_hard_slots`, by bucketing every negative among the
    anchor's sorted positives. O(B N log K) time, O(B N) memory.

    bucket(a, n) = #{p : d_ap < d_an}: n is farther than exactly the `bucket` nearest
    positives. Bucket j >= 1 lies in (d_a(j-1), d_a(j)], so bucket minima increase with j,
    and the nearest negative farther than the i-th positive is the minimum of the first
    non-empty bucket j > i (none: the farthest negative). A negative at exactly d_ap is in
    bucket <= i, so it is not "farther". The minimum per (anchor, bucket) is one segment
    min over [B, N]; the lowest column wins ties, as argmin does in the slot loop.
    """
    b, n = rows_and_columns(d)
    rows = tf.range(b)
    d_ap, cols, exists, k = positives_by_distance(d, blocks)
    nearest, farthest = _nearest_in_buckets(d, labels, blocks.own, d_ap, k, CHUNK_ELEMENTS)
    has_neg = blocks.n_pos + 1 < n
    nearest = nearest[:, 1:]  # bucket 0: nearer than every positive
    # Column i of `nearest` is bucket i + 1. Cut each row into runs: empty buckets up to and
    # including the next non-empty one. Every bucket of a run answers with that one.
    non_empty = nearest < n
    run = tf.cumsum(tf.cast(non_empty, tf.int32), axis=1, exclusive=True) + rows[:, None] * k
    first = tf.math.unsorted_segment_min(tf.reshape(nearest, [-1]), tf.reshape(run, [-1]), b * k)
    chosen = tf.gather(first, run)  # [B, K]: >= N when no negative is farther
    found = chosen < n
    pick = tf.where(found, chosen, farthest[:, None])

    return semi_hard_items(d, d_ap, cols, pick, exists, has_neg, margin, soft_margin)


def soft_batch_all_slots(d, labels, blocks: Blocks):
    """Soft-margin batch-all by positive slots, with its gradient.

    d [B, N] (no gradient), labels [N]. Returns (sum of softplus(d_ap - d_an) over valid
    triplets [], number of them with d_ap > d_an [] int64, d sum / d d [B, N]).
    O(B N S) time (O(B^3) for a single class), O(B N) memory.
    """
    neg = negatives(labels, blocks.own)
    inf = tf.constant(float("inf"), d.dtype)
    neg_d = tf.where(neg, d, inf)

    def body(j, total, count, grad):
        col, exists = slot(j, blocks)
        d_ap = tf.where(exists, rows_take(d, col), -inf)
        # -inf wherever (a, p_j, n) is not a valid triplet: softplus and sigmoid give 0 there.
        x = d_ap[:, None] - neg_d
        total += tf.reduce_sum(tf.nn.softplus(x))
        count += tf.reduce_sum(tf.cast(tf.reduce_sum(tf.cast(x > 0, tf.int32), 1), tf.int64))
        s = tf.sigmoid(x)
        grad = tf.tensor_scatter_nd_add(grad - s, scatter_index(col), tf.reduce_sum(s, 1))
        return j + 1, total, count, grad

    n_slots = tf.reduce_max(blocks.n_pos)
    init = (tf.constant(0), tf.zeros([], d.dtype), tf.constant(0, tf.int64), tf.zeros_like(d))
    _, total, count, grad = tf.while_loop(lambda j, *_: j < n_slots, body, init)
    return total, count, grad
