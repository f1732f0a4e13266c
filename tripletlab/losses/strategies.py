"""The mining strategies: each a short function of labelled stages (prepare, distances, mine,
reduce), declared in :mod:`tripletlab.options.mining` (registry ``STRATEGIES``, key
``mining.strategy``).

Every strategy takes ``labels`` [B] and ``embeddings`` [B, D] and returns ``(loss,
fraction)``, two scalars, and these keyword arguments:

* ``margin``, ``squared``, ``soft_margin``: the hinge h = max(d_ap - d_an + margin, 0), or
  softplus(d_ap - d_an) with the soft margin (the margin is then ignored);
* ``memory``: None, or ``(labels [M], embeddings [M, D])`` of earlier batches (cross-batch
  memory, no gradient). Anchors are the batch; positives and negatives come from the batch
  and the memory together. The distance matrix is [B, B + M], never [B + M, B + M];
* ``engine`` ("auto", "slots", "buckets", "native", "sorted") and ``jit_compile`` (whether
  the caller compiles with XLA): which exact engine of :mod:`tripletlab.losses.engines` mines
  (only batch-all and semi-hard have several; all give the same numbers).

float16 / bfloat16 embeddings are computed in float32; float64 stays float64. When nothing
is counted, loss and fraction are 0 (never NaN); when an embedding is NaN or inf, both are
NaN. Gradients are exact and first-order: each strategy computes d loss / d distances in
the forward pass and attaches it (``with_gradient``).
"""

from __future__ import annotations

import tensorflow as tf

from tripletlab.errors import ConfigError
from tripletlab.losses import blocked, engines, native, picks
from tripletlab.losses.distances import pairwise_distances, prepare, with_memory_labels
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
from tripletlab.options.mining import NEGATIVES
from tripletlab.registry import STRATEGIES


def _columns(labels, embeddings, squared, memory):
    """Stages 1-2: (anchor labels [B], column labels [N], embeddings [B, D], d [B, N],
    every embedding that must be finite), N = B + M."""
    labels, embeddings = prepare(labels, embeddings)
    column_labels, memory_embeddings, checked = labels, None, embeddings
    if memory is not None:
        memory_labels, memory_embeddings = memory
        labels, column_labels = with_memory_labels(labels, memory_labels)
        memory_embeddings = tf.cast(memory_embeddings, embeddings.dtype)
        checked = tf.concat([embeddings, tf.stop_gradient(memory_embeddings)], axis=0)
    d = pairwise_distances(embeddings, squared, memory=memory_embeddings)
    return labels, column_labels, embeddings, d, checked


def _in_form(strategy, dense, labels, embeddings, *args):
    """Batch-all / semi-hard: ``dense(labels, embeddings, *args)`` or the blocked form
    (losses/blocked.py), as :func:`engines.mining_form` says. args: (margin, squared,
    soft_margin, memory, engine, jit_compile)."""
    engine, jit_compile = args[4:]
    if engines.mining_form(engine, jit_compile) == "dense":
        return dense(labels, embeddings, *args)
    return getattr(blocked, strategy)(labels, embeddings, *args)


def batch_all_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Batch-all: every valid triplet (a != p, y_a = y_p, y_n != y_a).

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Hinge: mean of the
    positive hinges, fraction = positive hinges / valid triplets. Soft margin: mean
    softplus(d_ap - d_an) over valid triplets, fraction = share with d_ap > d_an. Memory
    O(B N), or O(B D + N) in row blocks beyond engines.DENSE_ELEMENTS distances
    (losses/blocked.py); time O(B N log N) at most for the hinge, O(B N S) for the soft
    margin (S = largest class size - 1).
    """
    engines.check_engine(engine, jit_compile)
    args = (margin, squared, soft_margin, memory, engine, jit_compile)
    return _in_form("batch_all", _batch_all_dense, labels, embeddings, *args)


def _batch_all_dense(labels, embeddings, margin, squared, soft_margin, memory, engine, jit_compile):
    """Batch-all on the whole [B, N] distance matrix."""
    # 1-2. distances [B, N]
    labels, column_labels, embeddings, d, checked = _columns(labels, embeddings, squared, memory)
    dtype, b = d.dtype, tf.shape(labels)[0]
    d_const = tf.stop_gradient(d)
    blocks = class_blocks(column_labels, b)
    n_neg = tf.shape(column_labels)[0] - blocks.n_pos - 1
    n_valid = tf.reduce_sum(tf.cast(blocks.n_pos, tf.int64) * tf.cast(n_neg, tf.int64))

    if soft_margin:  # 3-4. mine and reduce in one loop: softplus is not linear in d
        total, n_violating, grad = engines.soft_batch_all_slots(d_const, column_labels, blocks)
        scale = 1 / tf.cast(tf.maximum(n_valid, 1), dtype)
        loss = with_gradient(d, ratio(total, n_valid, dtype), grad, scale)
        return nan_unless_finite(checked, loss, ratio(n_violating, n_valid, dtype))

    # 3. mine: integer coefficients w [B, N] and the count of positive hinges
    margin = tf.cast(margin, dtype)

    def run(name):
        if name == "slots":
            return engines.batch_all_slots(d_const, column_labels, margin, blocks)
        if name == "sorted":
            return engines.batch_all_sorted(d_const, column_labels, margin)
        if name == "native":
            return native.batch_all(d_const, margin, blocks)
        return engines.batch_all_buckets(d_const, margin, blocks)

    w, count = engines.choose("batch_all", blocks, engine, jit_compile, run, dtype)
    # 4. reduce: a flat dot product, no [B, N] temporary for w * d. The gradient w.r.t. d
    # is w / count, attached directly: the tape's gradient of the dot product is a slow
    # outer product.
    total = tf.tensordot(tf.reshape(w, [-1]), tf.reshape(d_const, [-1]), 1)
    total += margin * tf.cast(count, dtype)
    scale = 1 / tf.cast(tf.maximum(count, 1), dtype)
    loss = with_gradient(d, ratio(total, count, dtype), w, scale)
    return nan_unless_finite(checked, loss, ratio(count, n_valid, dtype))


def batch_hard_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Batch-hard: per anchor, its farthest positive and nearest negative.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Mean over anchors that
    have a positive and a negative; fraction = share of them with h > 0 (soft margin: with
    d_ap > d_an). O(B D + B N) time; ``engine`` "dense" ([B, N] scores) or "blocked" (rows
    in blocks, O(B D + N) memory), else the size rule of :func:`engines.one_pick_engine`.
    """
    # 1-3. scores [B, N], the two picked columns per anchor, their 2B distances and the mean
    options = {"memory": memory, "engine": engine, "jit_compile": jit_compile}
    return picks.one_pick_loss(
        "batch_hard", labels, embeddings, margin, squared, soft_margin, **options
    )


def semi_hard_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Semi-hard (FaceNet): per valid pair, the nearest negative farther than p.

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). For each (a, p) with
    a != p, y_a = y_p, and a having a negative: the negative with the smallest d_an > d_ap,
    else the farthest negative. Mean over those pairs; fraction = share with h > 0 (soft
    margin: d_ap > d_an). Memory O(B N), or O(B D + N) in row blocks beyond
    engines.DENSE_ELEMENTS distances (losses/blocked.py); time O(B N min(S, log N)).
    """
    engines.check_engine(engine, jit_compile)
    args = (margin, squared, soft_margin, memory, engine, jit_compile)
    return _in_form("semi_hard", _semi_hard_dense, labels, embeddings, *args)


def _semi_hard_dense(labels, embeddings, margin, squared, soft_margin, memory, engine, jit_compile):
    """Semi-hard on the whole [B, N] distance matrix."""
    # 1-2. distances [B, N]
    labels, column_labels, _, d, checked = _columns(labels, embeddings, squared, memory)
    dtype, b = d.dtype, tf.shape(labels)[0]
    d_const = tf.stop_gradient(d)
    blocks = class_blocks(column_labels, b)
    margin = tf.cast(margin, dtype)

    # 3. mine: (sum of the items, number active, d sum / d d [B, N])
    def run(name):
        if name == "slots":
            return engines.semi_hard_slots(d_const, column_labels, margin, soft_margin, blocks)
        if name == "sorted":
            return engines.semi_hard_sorted(d_const, column_labels, margin, soft_margin)
        if name == "native":
            return native.semi_hard(d_const, margin, soft_margin, blocks)
        return engines.semi_hard_buckets(d_const, column_labels, margin, soft_margin, blocks)

    total, n_active, grad = engines.choose("semi_hard", blocks, engine, jit_compile, run, dtype)
    # 4. reduce: the mean over pairs whose anchor has a negative
    has_neg = blocks.n_pos + 1 < tf.shape(column_labels)[0]
    n_pairs = tf.reduce_sum(tf.where(has_neg, tf.cast(blocks.n_pos, tf.int64), 0))
    scale = 1 / tf.cast(tf.maximum(n_pairs, 1), dtype)
    loss = with_gradient(d, ratio(total, n_pairs, dtype), grad, scale)
    return nan_unless_finite(checked, loss, ratio(n_active, n_pairs, dtype))


def easy_positive_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    negatives="semi_hard",
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Easy-positive / hard-negative (EPHN, Xuan et al., WACV 2020): per anchor, its nearest
    positive p, with the nearest negative farther than p, else the farthest negative
    (``negatives="semi_hard"``), or the nearest negative (``negatives="hard"``).

    labels [B] int, embeddings [B, D] float -> (loss [], fraction []). Mean over anchors that
    have a positive and a negative; fraction = share of them with h > 0. Ties go to the
    lowest column, as in the other strategies. Time, memory and ``engine``: as batch-hard.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives={negatives!r} is not valid; choose one of: semi_hard, hard")
    # 1-3. as batch-hard: scores, two columns per anchor, 2B distances and the mean
    options = {"memory": memory, "engine": engine, "jit_compile": jit_compile}
    return picks.one_pick_loss(
        "easy_positive",
        labels,
        embeddings,
        margin,
        squared,
        soft_margin,
        negatives=negatives,
        **options,
    )


def distance_weighted_triplet_loss(
    labels,
    embeddings,
    margin=0.5,
    squared=False,
    soft_margin=False,
    *,
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    seed=None,
    memory=None,
    engine="auto",
    jit_compile=False,
):
    """Distance-weighted sampling (Wu et al., ICCV 2017, "Sampling Matters"): per valid pair
    (a, p), one negative drawn with probability ∝ min(λ, 1/q(d_an)), q the density of
    distances on the unit sphere (:func:`distance_weights`).

    labels [B] int, embeddings [B, D] float, L2-normalised -> (loss [], fraction []). Mean
    over pairs whose anchor has a negative nearer than ``nonzero_loss_cutoff``; fraction =
    share of them with h > 0. ``seed``: None (TensorFlow's stateful generator) or an int
    [2] tensor (training passes (config seed, step), so a resumed run draws the same).
    Euclidean distances only. O(B N) memory; time O(B N + B S log N).
    """
    engines.check_engine(engine, jit_compile)
    if squared:
        raise ConfigError(
            "distance_weighted samples by euclidean distances on the unit sphere: set "
            "mining.squared=false"
        )
    args = (margin, soft_margin, cutoff, nonzero_loss_cutoff, seed, memory)
    if engines.mining_form(engine, jit_compile) == "blocked":
        return blocked.distance_weighted(labels, embeddings, *args)
    return _distance_weighted_dense(labels, embeddings, *args, jit_compile)


def _distance_weighted_dense(
    labels, embeddings, margin, soft_margin, cutoff, nonzero_loss_cutoff, seed, memory, jit
):
    """Distance-weighted on the whole [B, N] distance matrix (under XLA)."""
    # 1-2. distances [B, N] between unit vectors
    raw_embeddings = embeddings
    labels, column_labels, embeddings, d, checked = _columns(labels, embeddings, False, memory)
    tolerance = unit_norm_tolerance(raw_embeddings)
    with tf.control_dependencies(check_unit_norm(embeddings, tolerance)):
        d = tf.identity(d)
    dtype, b = d.dtype, tf.shape(labels)[0]
    n = tf.shape(column_labels)[0]
    d_const = tf.stop_gradient(d)
    # 3. mine: the weights, then one negative per (anchor, positive slot). Under XLA the
    # number of slots must be static: every column gets a draw (O(B N log N)).
    log_weights = distance_weights(
        d_const, labels, column_labels, tf.shape(embeddings)[1], cutoff, nonzero_loss_cutoff
    )
    blocks = class_blocks(column_labels, b)
    slots = n if jit else tf.maximum(tf.reduce_max(blocks.n_pos), 1)
    uniforms = negative_uniforms(b, slots, seed)
    total, counts, grad = drawn_items(
        d_const, log_weights, uniforms, blocks, slots, margin, soft_margin
    )
    # 4. reduce over the drawn (a, p, n), with the exact gradient
    count, n_active = counts[0], counts[1]
    scale = 1 / tf.cast(tf.maximum(count, 1), dtype)
    loss = with_gradient(d, ratio(total, count, dtype), grad, scale)
    return nan_unless_finite(checked, loss, ratio(n_active, count, dtype))


def get(name):
    """The strategy function registered as ``name`` (ConfigError naming the valid ones)."""
    return STRATEGIES.get(name)


def _who(name):
    """The strategy ``name`` (and its plugin), or the function given in its place."""
    if isinstance(name, str):
        plugin = STRATEGIES.option(name).plugin
        return f"mining.strategy={name!r}" + (f" (plugin {plugin})" if plugin else "")
    return f"the strategy {getattr(name, '__qualname__', name)!r}"


def unconnected(name):
    """The ConfigError for strategy ``name``'s loss when it has no gradient with respect to
    the embeddings (known while the step is traced): nothing but the regularisation would
    train, or the optimizer would fail with a traceback."""
    err = ConfigError(
        f"{_who(name)} returned a loss with no gradient with respect to the embeddings (a "
        "constant, or computed through tf.stop_gradient or tf.numpy_function); it must be a "
        "differentiable function of them (docs/extending.md)"
    )
    err.ag_pass_through = True  # raised while traced: keep the message one line
    return err


def checked(name, result, dtype=None):
    """``result`` of strategy ``name``'s function as ``(loss [], fraction [])`` tensors if
    it is two floating scalars, cast to ``dtype`` when given (the train step asks float32:
    it adds the float32 regularisation losses; the functions keep float64 exact); else
    ConfigError naming the strategy (and its plugin) and what it returned. Checked on the static shapes, so at trace time: before the first
    step trains on a loss of the wrong shape (a per-anchor loss [B] would silently be
    reduced). A shape of unknown rank (``tf.py_function``'s) is refused too: it could be
    [B] when it runs."""
    who = _who(name)
    want = "(loss, fraction), each a floating scalar [] (docs/extending.md)"
    problem, values = None, []
    if not (isinstance(result, tuple | list) and len(result) == 2):
        problem = f"{type(result).__name__}"
    else:
        for what, value in zip(("loss", "fraction"), result, strict=True):
            try:
                value = tf.convert_to_tensor(value)
            except (TypeError, ValueError):
                problem = f"a {what} of type {type(value).__name__}"
                break
            rank = value.shape.rank
            if not value.dtype.is_floating or rank != 0:
                shape = value.shape.as_list() if rank is not None else "unknown"
                problem = f"a {what} of shape {shape} and dtype {value.dtype.name}"
                break
            values.append(value if dtype is None else tf.cast(value, dtype))
    if problem is None:
        return tuple(values)
    if "shape unknown" in problem:
        want += "; give it a static shape, e.g. tf.ensure_shape(loss, [])"
    err = ConfigError(f"{who} returned {problem}; it must return {want}")
    # raised while a tf.function traces: without this, autograph rewrites the message
    # into a multi-line "in user code: File ..." trace
    err.ag_pass_through = True
    raise err


def triplet_loss(
    labels,
    embeddings,
    strategy="semi_hard",
    margin=0.5,
    squared=False,
    soft_margin=False,
    **options,
):
    """Dispatch to the loss of ``strategy`` (a name in STRATEGIES) -> (loss [], fraction []).
    ``options``: the strategy's keyword arguments (memory, engine, jit_compile, ...)."""
    loss = get(strategy)
    result = loss(
        labels, embeddings, margin=margin, squared=squared, soft_margin=soft_margin, **options
    )
    return checked(strategy, result)
