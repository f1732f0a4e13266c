"""easy_positive, distance_weighted and the cross-batch memory: exact against the brute
force of tripletlab.losses.reference (distance-weighted: its weights are the paper's
formula, and its draws follow them)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tripletlab import losses
from tripletlab.errors import ConfigError
from tripletlab.losses import engines, pieces, reference, sampling, strategies

MARGIN = 0.5


def unit_batch(b, n_classes, dim, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=b).astype(np.int32)
    emb = rng.normal(size=(b, dim))
    return labels, (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(dtype)


def value_and_grad(fn, labels, emb, **kwargs):
    emb = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss, fraction = fn(tf.constant(labels), emb, **kwargs)
    return float(loss), float(fraction), tape.gradient(loss, emb).numpy()


# ------------------------------------------------------------------------ easy positive


@pytest.mark.parametrize("negatives", ["semi_hard", "hard"])
@pytest.mark.parametrize("case", [(12, 3, 2, 0), (30, 4, 5, 1), (40, 10, 8, 2), (24, 2, 3, 3)])
def test_easy_positive_matches_brute_force(case, negatives):
    labels, emb = unit_batch(*case)
    for soft, squared in itertools.product((False, True), (False, True)):
        kwargs = {"margin": MARGIN, "squared": squared, "soft_margin": soft}
        want = reference.triplet_loss(
            labels, emb, "easy_positive", MARGIN, squared, soft, negatives=negatives
        )
        want_grad = reference.triplet_loss_grad(
            labels, emb, "easy_positive", MARGIN, squared, soft, negatives=negatives
        )
        loss, fraction, grad = value_and_grad(
            losses.easy_positive_triplet_loss, labels, emb, negatives=negatives, **kwargs
        )
        np.testing.assert_allclose([loss, fraction], want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_easy_positive_ties_go_to_the_lowest_column():
    """Integer line: equal distances everywhere. The nearest positive, the negative and
    hence the gradient follow the lowest column, as the other strategies do."""
    xs = [0, 1, 1, 2, 3, 3, 4, 0, 2, 2, 4]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 1, 0], np.int32)
    emb = np.stack([np.asarray(xs, np.float64), np.zeros(len(xs))], axis=1)
    for negatives in ("semi_hard", "hard"):
        want = reference.triplet_loss_grad(labels, emb, "easy_positive", 1.0, negatives=negatives)
        _, _, got = value_and_grad(
            losses.easy_positive_triplet_loss, labels, emb, margin=1.0, negatives=negatives
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_easy_positive_differs_from_batch_hard_and_rejects_bad_negatives():
    labels, emb = unit_batch(30, 3, 4, 5)
    easy = losses.easy_positive_triplet_loss(labels, emb, negatives="hard")
    hard = losses.batch_hard_triplet_loss(labels, emb)
    assert float(easy[0]) < float(hard[0])  # the nearest positive, not the farthest
    with pytest.raises(ValueError, match="negatives='easy' is not valid"):
        losses.easy_positive_triplet_loss(labels, emb, negatives="easy")


# ------------------------------------------------------------------- distance weighted


def _log_weights(labels, emb, memory=None, cutoff=0.5, nonzero=1.4):
    memory_emb = None if memory is None else memory[1]
    column_labels = labels if memory is None else np.concatenate([labels, memory[0]])
    d = losses.pairwise_distances(emb, memory=memory_emb)
    return strategies.distance_weights(
        d, tf.constant(labels), tf.constant(column_labels), emb.shape[1], cutoff, nonzero
    )


@pytest.mark.parametrize("dim", [3, 8, 64, 128])
def test_distance_weights_are_the_papers_formula(dim):
    """Normalised, the log-space weights equal 1/q(max(d, cutoff)) computed with powers, 0
    for positives and beyond nonzero_loss_cutoff (D = 128: 1/q overflows float32, not the
    log-space weights, so the reference runs in float64 and for D <= 64 only)."""
    labels, emb = unit_batch(40, 4, dim, dim)
    probabilities = tf.nn.softmax(_log_weights(labels, emb)).numpy()
    if dim <= 64:
        want = reference.distance_weights(labels, emb)
        np.testing.assert_allclose(probabilities, want, rtol=1e-9, atol=1e-15)
    d = reference.distances(labels, emb)
    negative = labels[:, None] != labels[None, :]
    assert np.all(probabilities[~negative | (d >= 1.4)] == 0)
    # Among the drawable, a nearer negative (above the cutoff) weighs more, for D > 3.
    row = np.argmax((negative & (d < 1.4) & (d > 0.5)).sum(1))
    drawable = np.flatnonzero(negative[row] & (d[row] < 1.4) & (d[row] > 0.5))
    by_distance = drawable[np.argsort(d[row, drawable])]
    assert np.all(np.diff(probabilities[row, by_distance]) <= 0)


def test_distance_weights_match_pytorch_metric_learning():
    """pytorch-metric-learning's DistanceWeightedMiner's weights on the same distances."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.miners")
    labels, emb = unit_batch(32, 4, 16, 7)
    miner = pml.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    captured = {}

    def spy(labels_, ref_labels, weights=None):  # PML samples with these weights
        captured["weights"] = weights
        return original(labels_, ref_labels, weights=weights)

    import pytorch_metric_learning.miners.distance_weighted_miner as module

    original = module.lmu.get_random_triplet_indices
    module.lmu.get_random_triplet_indices = spy
    try:
        miner(torch.tensor(emb), torch.tensor(labels))
    finally:
        module.lmu.get_random_triplet_indices = original
    want = captured["weights"].double().numpy()
    got = tf.nn.softmax(_log_weights(labels, emb)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _chi_square(observed, expected):
    return float(((observed - expected) ** 2 / expected).sum())


def test_draws_follow_the_weights():
    """One anchor with 400 positives draws a negative for each, 25 times: 10,000 draws
    against the weights of its row, a chi-square test at the 0.1% level (a fixed seed:
    deterministic). A bug that drew uniformly, or from the wrong row, fails it."""
    rng = np.random.default_rng(11)
    dim = 8
    negatives = rng.normal(size=(12, dim))
    anchor = rng.normal(size=(1, dim))
    positives = anchor + 0.3 * rng.normal(size=(400, dim))
    emb = np.concatenate([anchor, positives, negatives])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0] * 401 + list(range(1, 13)), np.int32)
    log_weights = _log_weights(labels, emb)
    probabilities = tf.nn.softmax(log_weights[0]).numpy()
    drawable = np.flatnonzero(probabilities > 0)
    assert len(drawable) >= 5  # several negatives carry weight: the test can tell them apart
    # 25 rows of the same weights, 400 draws each: 10,000 draws from one seed
    rows = tf.repeat(log_weights[:1], 25, axis=0)
    drawn, has_weight = sampling.draw_negatives(
        rows, sampling.negative_uniforms(25, 400, tf.constant([11, 3]))
    )
    assert bool(tf.reduce_all(has_weight))
    counts = np.bincount(tf.reshape(drawn, [-1]).numpy(), minlength=len(labels)).astype(float)
    assert counts.sum() == 10_000 and counts[probabilities == 0].sum() == 0
    statistic = _chi_square(counts[drawable], 10_000 * probabilities[drawable])
    try:
        from scipy.stats import chi2

        threshold = chi2.ppf(0.999, len(drawable) - 1)
    except ImportError:  # the 0.1% point for up to 11 degrees of freedom
        threshold = 31.26
    assert statistic < threshold
    uniform = np.full(len(drawable), 10_000 / len(drawable))
    assert _chi_square(counts[drawable], uniform) > threshold  # the weights matter here


@pytest.mark.parametrize("form", ["one block", "blocks of 3 rows", "dense"])
def test_distance_weighted_loss_is_the_mean_over_its_draws(form, monkeypatch):
    """Given the draws (same seed), loss, fraction and gradient are the brute force's over
    exactly those triplets, with and without a memory, in each form: the blocked one (one
    block; blocks of 3 rows, the last shorter: each block draws its rows' negatives) and
    the dense one (XLA's)."""
    if form == "dense":
        monkeypatch.setattr(engines, "mining_form", lambda *_, **__: "dense")
    elif form == "blocks of 3 rows":
        monkeypatch.setattr(engines, "DENSE_ELEMENTS", 0)
        monkeypatch.setattr(engines, "BLOCK_ELEMENTS", 3 * 34)  # 3 rows of 34 columns, 4 of 24
    labels, emb = unit_batch(24, 3, 6, 21)
    memory = unit_batch(10, 4, 6, 22)
    for mem in (None, memory):
        seed = tf.constant([5, 9])
        loss, fraction, grad = value_and_grad(
            losses.distance_weighted_triplet_loss, labels, emb, seed=seed, memory=mem
        )
        column_labels = labels if mem is None else np.concatenate([labels, mem[0]])
        log_weights = _log_weights(labels, emb, mem)
        blocks = pieces.class_blocks(tf.constant(column_labels), len(labels))
        slots = max(int(tf.reduce_max(blocks.n_pos)), 1)
        pos_cols, exists = pieces.positive_columns(blocks, slots)
        uniforms = sampling.negative_uniforms(len(labels), slots, seed)
        drawn, has_weight = sampling.draw_negatives(log_weights, uniforms)
        triplets = [
            (a, int(pos_cols[a, j]), int(drawn[a, j]))
            for a in range(len(labels))
            for j in range(slots)
            if exists[a, j] and has_weight[a]
        ]
        assert len(triplets) > 10
        want = reference.triplet_loss(
            labels, emb, "distance_weighted", memory=mem, triplets=triplets
        )
        np.testing.assert_allclose([loss, fraction], want, rtol=1e-9)
        want_grad = reference.triplet_loss_grad(
            labels, emb, "distance_weighted", memory=mem, triplets=triplets
        )
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_distance_weighted_needs_unit_vectors_and_euclidean_distances():
    labels, emb = unit_batch(12, 3, 4, 30)
    with pytest.raises(ValueError, match="needs L2-normalised embeddings"):
        losses.distance_weighted_triplet_loss(labels, 3 * emb)
    with pytest.raises(ConfigError, match="mining.squared=false"):
        losses.distance_weighted_triplet_loss(labels, emb, squared=True)
    graph = tf.function(losses.distance_weighted_triplet_loss)
    with pytest.raises(tf.errors.InvalidArgumentError, match="L2-normalised"):
        graph(labels, 3 * emb)


def test_distance_weighted_under_xla():
    labels, emb = unit_batch(24, 3, 6, 31, np.float32)
    step = tf.function(
        lambda y, e: losses.distance_weighted_triplet_loss(
            y, e, seed=tf.constant([1, 2]), jit_compile=True
        ),
        jit_compile=True,
    )
    loss, fraction = step(tf.constant(labels), tf.constant(emb))
    assert np.isfinite(float(loss)) and 0 < float(fraction) <= 1


# ---------------------------------------------------------------- cross-batch memory

MEMORY_CASES = [  # (B, M, classes, D, seed)
    (12, 20, 3, 4, 40),
    (16, 48, 4, 8, 41),  # the random10-like case: large classes across batch and memory
    (8, 30, 10, 3, 42),
    (10, 6, 2, 2, 43),  # D = 2: near-ties
]


@pytest.mark.parametrize("case", MEMORY_CASES, ids=lambda c: "B{}-M{}-C{}-D{}-s{}".format(*c))
def test_memory_matches_brute_force_over_batch_and_memory(case):
    """Anchors from the batch, positives and negatives from batch and memory: every
    strategy and engine, loss, fraction and gradient (none flows into the memory)."""
    b, m, n_classes, dim, seed = case
    labels, emb = unit_batch(b, n_classes, dim, seed)
    memory = unit_batch(m, n_classes, dim, seed + 100)
    runs = [("batch_all", e) for e in ("slots", "buckets", "native", "sorted")]
    runs += [("semi_hard", e) for e in ("slots", "buckets", "native", "sorted")]
    runs += [("batch_hard", "auto"), ("easy_positive", "auto")]
    for (strategy, engine), soft, squared in itertools.product(runs, (False, True), (False, True)):
        want = reference.triplet_loss(labels, emb, strategy, MARGIN, squared, soft, memory=memory)
        want_grad = reference.triplet_loss_grad(
            labels, emb, strategy, MARGIN, squared, soft, memory=memory
        )
        fn = losses.get(strategy)
        kwargs = {"margin": MARGIN, "squared": squared, "soft_margin": soft, "engine": engine}
        loss, fraction, grad = value_and_grad(fn, labels, emb, memory=memory, **kwargs)
        err = (strategy, engine, soft, squared)
        np.testing.assert_allclose([loss, fraction], want, rtol=1e-9, atol=1e-12, err_msg=err)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-11, err_msg=err)


def test_memory_changes_the_answer_and_an_empty_one_does_not():
    labels, emb = unit_batch(16, 4, 4, 50)
    memory = unit_batch(32, 4, 4, 51)
    empty = (np.zeros([0], np.int32), np.zeros([0, 4]))
    for strategy in ("batch_all", "batch_hard", "semi_hard", "easy_positive"):
        alone = losses.triplet_loss(labels, emb, strategy)
        np.testing.assert_allclose(
            losses.triplet_loss(labels, emb, strategy, memory=empty), alone, rtol=1e-12
        )
        assert float(losses.triplet_loss(labels, emb, strategy, memory=memory)[0]) != float(
            alone[0]
        )


def test_memory_keeps_the_distance_matrix_rectangular():
    """No [B + M, B + M] (nor cubic) tensor: the largest in the graph is [B, B + M]-sized,
    for every engine (the bound: semi-hard's [B, 2K] pairs stay below it)."""
    b, m = 20, 200

    for strategy, engine in [
        ("batch_all", "slots"),
        ("batch_all", "sorted"),
        ("semi_hard", "slots"),
        ("semi_hard", "sorted"),
        ("batch_hard", "auto"),
        ("easy_positive", "auto"),
    ]:

        @tf.function
        def step(y, e, my, me, strategy=strategy, engine=engine):
            with tf.GradientTape() as tape:
                tape.watch(e)
                loss, _ = losses.triplet_loss(y, e, strategy, memory=(my, me), engine=engine)
            return tape.gradient(loss, e)

        graph = step.get_concrete_function(
            tf.TensorSpec([b], tf.int32),
            tf.TensorSpec([b, 8], tf.float32),
            tf.TensorSpec([m], tf.int32),
            tf.TensorSpec([m, 8], tf.float32),
        ).graph
        sizes = [
            out.shape.num_elements()
            for op in graph.get_operations()
            for out in op.outputs
            if out.shape.is_fully_defined()
        ]
        assert max(sizes) <= 2 * b * (b + m) < (b + m) ** 2, strategy
    assert engines.CHUNK_ELEMENTS > 0


def _per_anchor(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    """A strategy that forgets to reduce: a loss per anchor [B]."""
    return tf.norm(embeddings, axis=1), tf.constant(1.0)


def _loss_only(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    """A strategy that forgets the fraction: one tensor, not a pair."""
    return tf.reduce_mean(embeddings)


@pytest.mark.parametrize(
    "function, problem",
    [
        (_per_anchor, "a loss of shape [4] and dtype float32"),
        (_loss_only, "EagerTensor"),
    ],
)
def test_a_function_given_as_the_strategy_is_named_in_the_result_check(function, problem):
    """triplet_loss takes a function in place of a registered name; a wrong result names
    the function (its qualified name, not its repr) and what it returned."""
    labels, emb = tf.constant([0, 0, 1, 1]), tf.eye(4)
    with pytest.raises(ConfigError) as err:
        losses.triplet_loss(labels, emb, strategy=function)
    message = str(err.value)
    assert message.startswith(f"the strategy {function.__name__!r} returned {problem}; it must")
