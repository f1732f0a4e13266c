"""tripletlab.losses: exactness against brute force, gradients, graph size, dtypes, XLA, bench."""

from __future__ import annotations

import csv
import itertools
import math
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from tripletlab import losses
from tripletlab.bench import __main__ as bench_cli
from tripletlab.bench import loss_cases, loss_report
from tripletlab.bench import losses as bench
from tripletlab.errors import ConfigError
from tripletlab.losses import engines, native, pieces, reference

# The three strategies the engines, the dense references and the bench were built for.
# easy_positive and distance_weighted (which draws its negatives and needs unit embeddings)
# are checked against the brute force in tests/losses/test_strategies.py.
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
MARGIN = 0.5
# Every mining engine must give the same, exact answer; "auto" is what users get. "sorted" is
# the engine XLA uses; forced here outside XLA, where it runs as well. "buckets" runs
# semi-hard's [B, B] stage in chunks of 100 distances: several chunks, the last one shorter.
# "native" is the C++ kernel (losses/native_mining.cc) that "auto" runs for large classes.
PATHS = {
    "slots": engines.CHUNK_ELEMENTS,
    "buckets": 100,
    "native": engines.CHUNK_ELEMENTS,
    "sorted": engines.CHUNK_ELEMENTS,
}
# Batch-hard's forms (losses/picks.py): "dense" scores every row at once; "blocked" is forced
# with blocks of 100 // N rows (at least 1): many blocks at these sizes, the last one shorter.
ONE_PICK_PATHS = ("dense", "blocked")
SMALL_BLOCK = 100
ENGINE = {"name": "auto"}  # the engine the calls below pass, set by the force_path fixture


def mine(*args, **kwargs):
    """losses.triplet_loss with the engine the test chose."""
    return losses.triplet_loss(*args, engine=ENGINE["name"], **kwargs)


def named(strategy):
    """The strategy's function with the engine the test chose."""
    fn = getattr(losses, f"{strategy}_triplet_loss")
    return lambda *args, **kwargs: fn(*args, engine=ENGINE["name"], **kwargs)


def brute_force(labels, emb, strategy, margin=MARGIN, squared=False, soft_margin=False):
    return reference.triplet_loss(labels, emb, strategy, margin, squared, soft_margin)


def brute_force_grad(labels, emb, strategy, margin=MARGIN, squared=False, soft_margin=False):
    return reference.triplet_loss_grad(labels, emb, strategy, margin, squared, soft_margin)


def random_batch(b, n_classes, dim, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=b).astype(np.int32)
    # Scaled so that distances (~1.4) and the margin (0.5) are comparable: many triplets
    # are active, many are not.
    emb = (rng.normal(size=(b, dim)) / np.sqrt(dim)).astype(dtype)
    return labels, emb


@pytest.fixture
def force_path(monkeypatch):
    """force(path): the calls through mine() and named() use that engine ("buckets" runs
    semi-hard's [B, N] stage in chunks of 100 distances: several, the last one shorter)."""

    def force(path):
        ENGINE["name"] = path
        monkeypatch.setattr(engines, "CHUNK_ELEMENTS", PATHS.get(path, engines.CHUNK_ELEMENTS))
        monkeypatch.setattr(engines, "BLOCK_ELEMENTS", SMALL_BLOCK)

    yield force
    ENGINE["name"] = "auto"


def paths_for(strategy):
    return tuple(PATHS) if strategy in ("batch_all", "semi_hard") else ONE_PICK_PATHS


def assert_close(got, want, dtype):
    rtol, atol = (1e-5, 1e-6) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# 1. Exact against brute force
# --------------------------------------------------------------------------------------------

RANDOM_CASES = [  # (B, classes, D, seed): labels drawn uniformly, as a random sampler does
    (2, 1, 1, 0),
    (2, 2, 3, 1),
    (5, 2, 1, 2),
    (12, 3, 2, 3),
    (24, 10, 128, 4),
    (33, 4, 7, 5),
    (40, 6, 64, 6),
    (64, 10, 16, 7),
    (64, 2, 4, 8),
    (48, 3, 2, 9),  # ~16 per class: large classes, and D = 2 gives near-ties
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", RANDOM_CASES, ids=lambda c: "B{}-C{}-D{}-s{}".format(*c))
def test_matches_brute_force(case, strategy, force_path):
    b, n_classes, dim, seed = case
    for dtype, soft, squared in itertools.product(
        (np.float64, np.float32), (False, True), (False, True)
    ):
        labels, emb = random_batch(b, n_classes, dim, seed, dtype)
        want = brute_force(labels, emb, strategy, MARGIN, squared, soft)
        for path in paths_for(strategy):
            force_path(path)
            loss, fraction = mine(labels, emb, strategy, MARGIN, squared, soft)
            assert loss.dtype == fraction.dtype == tf.as_dtype(dtype)
            assert_close([loss, fraction], want, dtype)


EDGE_CASES = {
    "B1": ([0], [[0.3, -0.2]]),
    "one_class": ([3] * 6, None),
    "all_distinct": (list(range(7)), None),
    "singleton_classes": ([0, 0, 0, 1, 2, 2, 2, 3], None),
    "duplicates": ([0, 0, 0, 1, 1, 1, 2, 2, 3, 3], "dup"),
    "all_identical": ([0, 0, 0, 0, 1, 1, 1, 1], "same"),
}


def edge_batch(name):
    labels, emb = EDGE_CASES[name]
    labels = np.asarray(labels, np.int32)
    rng = np.random.default_rng(11)
    if emb is None or isinstance(emb, str):
        emb_arr = rng.normal(size=(len(labels), 3)) / np.sqrt(3)
        if emb == "dup":  # a positive, a negative and a cross-class pair coincide
            emb_arr[1] = emb_arr[0]
            emb_arr[3] = emb_arr[0]
            emb_arr[6] = emb_arr[4]
            emb_arr[9] = emb_arr[8]
        elif emb == "same":
            emb_arr[:] = emb_arr[0]
        emb = emb_arr
    return labels, np.asarray(emb, np.float64)


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases_match_brute_force(name, force_path):
    labels, emb = edge_batch(name)
    for strategy, soft, squared in itertools.product(STRATEGIES, (False, True), (False, True)):
        want = brute_force(labels, emb, strategy, MARGIN, squared, soft)
        for path in paths_for(strategy):
            force_path(path)
            got = mine(labels, emb, strategy, MARGIN, squared, soft)
            assert np.all(np.isfinite(got))
            assert_close(got, want, np.float64)


@pytest.mark.parametrize("name", ["B1", "one_class", "all_distinct"])
def test_nothing_counted_gives_zero_not_nan(name):
    labels, emb = edge_batch(name)
    emb = tf.constant(emb, tf.float32)
    for strategy, soft in itertools.product(STRATEGIES, (False, True)):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, fraction = losses.triplet_loss(labels, emb, strategy, soft_margin=soft)
        grad = tape.gradient(loss, emb)
        assert float(loss) == 0.0 and float(fraction) == 0.0
        np.testing.assert_array_equal(grad.numpy(), 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_give_nan(bad):
    """Mining compares distances and NaN compares False: the loss must still say NaN."""
    labels, emb = random_batch(12, 3, 4, 12, np.float32)
    for rows in ([2], slice(None)):
        broken = emb.copy()
        broken[rows] = bad
        for strategy, soft, squared in itertools.product(STRATEGIES, (False, True), (False, True)):
            loss, fraction = losses.triplet_loss(labels, broken, strategy, MARGIN, squared, soft)
            assert np.isnan(loss) and np.isnan(fraction), (strategy, soft, squared)


def test_all_identical_values():
    """Every distance is 0: each counted item is exactly the margin."""
    labels, emb = edge_batch("all_identical")
    for strategy in STRATEGIES:
        loss, fraction = losses.triplet_loss(labels, emb, strategy)
        assert float(loss) == pytest.approx(MARGIN) and float(fraction) == 1.0


# Exact ties: d(a,p) - d(a,n) + margin == 0 exactly (integer coordinates, margin 1 or 3), so
# h = 0 and the triplet is not counted (README: "triplets with h > 0"). Expected values by
# hand; the cases with a tie counted are noted to show they differ.
TIE_CASES = {
    # labels [0, 0, 1] at x = 0, 1, 2. Triplets (a, p, n): (0, 1, 2): 1 - 2 + 1 = 0, a tie;
    # (1, 0, 2): 1 - 1 + 1 = 1. One of two counted: loss 1, fraction 1/2 (tie counted: 1/2, 1).
    "small": ([0, 0, 1], [0, 1, 2], 1.0, False, 1.0, 1 / 2),
    # Squared distances, margin 3: (0, 1, 2): 1 - 4 + 3 = 0, a tie; (1, 0, 2): 1 - 1 + 3 = 3.
    "squared": ([0, 0, 1], [0, 1, 2], 3.0, True, 3.0, 1 / 2),
    # A class of 42 at x = 0 and a class of 2 at x = 1 and x = 3 (large classes: rows sorted).
    # Anchors at 0 (42 x 41 pairs): n at 1 gives 0 - 1 + 1 = 0, a tie; n at 3 gives -2.
    # Anchor 1, p 3 (d 2), n at 0 (d 1): 2 - 1 + 1 = 2, 42 triplets. Anchor 3, p 1 (d 2),
    # n at 0 (d 3): 2 - 3 + 1 = 0, 42 ties. Valid: 2 * 42 * 41 + 2 * 42 = 3528; counted 42.
    # Loss 2, fraction 42 / 3528 = 1 / 84 (ties counted: 84 / 1806 and 1806 / 3528).
    "large_class": ([0] * 42 + [1, 1], [0] * 42 + [1, 3], 1.0, False, 2.0, 1 / 84),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(TIE_CASES))
def test_batch_all_exact_tie_is_not_counted(name, dtype):
    labels, xs, margin, squared, want_loss, want_fraction = TIE_CASES[name]
    emb = np.asarray(xs, dtype)[:, None]  # 1-D embeddings [B, 1]
    loss, fraction = losses.batch_all_triplet_loss(
        np.asarray(labels, np.int32), emb, margin=margin, squared=squared
    )
    assert float(loss) == pytest.approx(want_loss, rel=1e-12)
    assert float(fraction) == pytest.approx(want_fraction, rel=1e-6)


PK_CASES = [(32, 4, 6, 60), (36, 12, 3, 61), (40, 20, 2, 62)]  # (B, K per class, D, seed)


@pytest.mark.parametrize("case", PK_CASES, ids=lambda c: "B{}-K{}-D{}-s{}".format(*c))
def test_pk_batches_match_brute_force(case, force_path):
    """P x K batches (shuffled), small and large K, every engine."""
    b, k, dim, seed = case
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(b) // k).astype(np.int32)
    emb = rng.normal(size=(b, dim)) / np.sqrt(dim)
    for strategy, soft, squared in itertools.product(STRATEGIES, (False, True), (False, True)):
        want = brute_force(labels, emb, strategy, MARGIN, squared, soft)
        for path in paths_for(strategy):
            force_path(path)
            got = mine(labels, emb, strategy, MARGIN, squared, soft)
            assert_close(got, want, np.float64)


def tie_batch():
    """Large classes on the integer line: most distances, and distance + margin (margin 1),
    coincide exactly with other distances, and several embeddings coincide. Class 0 has 9
    members (8 positives per anchor: every engine but slots when forced), classes 1-3 fewer.
    """
    xs = [0, 1, 1, 2, 3, 3, 4, 5, 6] + [1, 2, 2, 4, 6] + [3, 5, 7] + [0, 2]
    labels = [0] * 9 + [1] * 5 + [2] * 3 + [3] * 2
    order = np.random.default_rng(70).permutation(len(xs))  # no label-sorted input
    return np.asarray(labels, np.int32)[order], np.asarray(xs, np.float64)[order, None]


def test_ties_with_large_classes_match_brute_force(force_path):
    """Exact ties between a negative and a positive's distance (semi-hard: not "farther")
    and between a negative and a threshold d_ap + margin (batch-all: h = 0, not counted)."""
    labels, emb = tie_batch()
    for strategy, soft, squared in itertools.product(STRATEGIES, (False, True), (False, True)):
        for dtype in (np.float64, np.float32):
            want = brute_force(labels, emb, strategy, 1.0, squared, soft)
            for path in paths_for(strategy):
                force_path(path)
                got = mine(labels, emb.astype(dtype), strategy, 1.0, squared, soft)
                assert_close(got, want, dtype)


# --------------------------------------------------------------------------------------------
# 2. Gradients
# --------------------------------------------------------------------------------------------


def value_and_grad(fn, labels, emb, **kwargs):
    emb = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss, _ = fn(tf.constant(labels), emb, **kwargs)
    return loss.numpy(), tape.gradient(loss, emb).numpy()


GRAD_CASES = [(6, 2, 3, 20), (12, 3, 4, 21), (20, 4, 8, 22), (16, 2, 5, 23), (18, 9, 2, 24)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "B{}-C{}-D{}-s{}".format(*c))
def test_gradients_match_dense_reference(case, strategy, force_path):
    """Same gradients as the dense B^3 formulations (distinct embeddings: no argmax ties)."""
    b, n_classes, dim, seed = case
    labels, emb = random_batch(b, n_classes, dim, seed)
    ours, dense = named(strategy), bench.DENSE[strategy]
    for soft, squared in itertools.product((False, True), (False, True)):
        kwargs = {"margin": MARGIN, "squared": squared, "soft_margin": soft}
        want_loss, want_grad = value_and_grad(dense, labels, emb, **kwargs)
        assert np.abs(want_grad).max() > 0  # the case does exercise the gradient
        for path in paths_for(strategy):
            force_path(path)
            got_loss, got_grad = value_and_grad(ours, labels, emb, **kwargs)
            np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
            np.testing.assert_allclose(got_grad, want_grad, rtol=1e-7, atol=1e-10)


def test_gradients_with_large_random_classes_match_dense_reference(force_path):
    """Random labels over few classes (the random sampler's batches), float64, every engine:
    the bucket engines' custom gradients against autodiff through the B^3 forms."""
    for b, n_classes, seed in ((30, 2, 80), (36, 3, 81)):
        labels, emb = random_batch(b, n_classes, 4, seed)
        assert np.bincount(labels).max() - 1 > max(engines.SLOT_LIMIT.values())
        for strategy, soft, squared in itertools.product(
            ("batch_all", "semi_hard"), (False, True), (False, True)
        ):
            kwargs = {"margin": MARGIN, "squared": squared, "soft_margin": soft}
            ours, dense = named(strategy), bench.DENSE[strategy]
            want_loss, want_grad = value_and_grad(dense, labels, emb, **kwargs)
            for path in paths_for(strategy):
                force_path(path)
                got_loss, got_grad = value_and_grad(ours, labels, emb, **kwargs)
                np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
                np.testing.assert_allclose(got_grad, want_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ["ties", "random"])
def test_gradients_match_brute_force(name, force_path):
    """float64 gradients against the definition computed one item at a time, every engine:
    the ties batch (exact ties of distances and of distance + margin, coincident embeddings;
    the gradient goes to the lowest index among equals) and random large classes."""
    if name == "ties":
        labels, emb = tie_batch()
        emb, margin = np.concatenate([emb, np.zeros_like(emb)], axis=1), 1.0  # D = 2
    else:
        (labels, emb), margin = random_batch(30, 2, 3, 85), MARGIN
    for strategy, soft, squared in itertools.product(STRATEGIES, (False, True), (False, True)):
        want = brute_force_grad(labels, emb, strategy, margin, squared, soft)
        assert np.abs(want).max() > 0
        fn = named(strategy)
        for path in paths_for(strategy):
            force_path(path)
            _, got = value_and_grad(
                fn, labels, emb, margin=margin, squared=squared, soft_margin=soft
            )
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=(strategy, path))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_engines_pick_the_same_element_on_ties(dtype, force_path):
    """At a tie the gradient goes to one element, the same in every engine: the lowest
    column among equally near (or, as fallback, equally far) negatives. float32 exercises
    semi-hard's packed int64 keys, float64 its two-pass minimum."""
    labels, emb = tie_batch()
    emb = np.concatenate([emb, np.zeros_like(emb)], axis=1).astype(dtype)  # D = 2
    for strategy, soft, squared in itertools.product(
        ("batch_all", "semi_hard"), (False, True), (False, True)
    ):
        fn = named(strategy)
        kwargs = {"margin": 1.0, "squared": squared, "soft_margin": soft}
        results = {}
        for path in paths_for(strategy):
            force_path(path)
            results[path] = value_and_grad(fn, labels, emb, **kwargs)
        for path, (loss, grad) in results.items():
            # The sums run in other orders: equal up to rounding, not bit for bit. A different
            # pick would move a whole coefficient, far above these tolerances.
            np.testing.assert_allclose(loss, results["slots"][0], rtol=1e-6, err_msg=path)
            np.testing.assert_allclose(grad, results["slots"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["duplicates", "all_identical"])
def test_gradients_finite_with_coincident_embeddings(name):
    """squared=False takes sqrt(0) there; float32, where rounding is least forgiving."""
    labels, emb = edge_batch(name)
    emb = tf.constant(emb, tf.float32)
    for strategy, soft in itertools.product(STRATEGIES, (False, True)):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, _ = losses.triplet_loss(labels, emb, strategy, soft_margin=soft)
        assert np.all(np.isfinite(tape.gradient(loss, emb).numpy()))


# --------------------------------------------------------------------------------------------
# 3. Memory: no [B, B, B] anywhere in the graph
# --------------------------------------------------------------------------------------------


def _all_ops(graph, seen=None):
    """Ops of a graph and of the functions it calls (while / cond bodies), recursively."""
    seen = set() if seen is None else seen
    for op in graph.get_operations():
        yield op
        for attr in ("body", "cond", "then_branch", "else_branch", "f"):
            try:
                name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            if name not in seen:
                seen.add(name)
                yield from _all_ops(graph._get_function(name).graph, seen)


def _largest_tensor(fn, b, soft_margin):
    @tf.function
    def step(labels, emb):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, fraction = fn(labels, emb, soft_margin=soft_margin)
        return loss, fraction, tape.gradient(loss, emb)

    graph = step.get_concrete_function(
        tf.TensorSpec([b], tf.int32), tf.TensorSpec([b, 16], tf.float32)
    ).graph
    largest = 0
    for op in _all_ops(graph):
        for out in op.outputs:
            if not out.shape.is_fully_defined():
                # Sizes known only at run time (the bucket engine's [B, K] tables: K comes
                # from the labels): test_no_cubic_tensor_at_run_time measures them.
                continue
            largest = max(largest, out.shape.num_elements())
    return largest


def _largest_tensor_at_run_time(fn, labels, emb, soft_margin=False):
    """Largest tensor (elements) any op outputs in one forward + backward run, loop bodies
    included: every executed node's outputs, from a session's full trace."""
    graph = tf.Graph()
    with graph.as_default():
        y = tf.compat.v1.placeholder(tf.int32, [None])
        e = tf.compat.v1.placeholder(tf.float32, [None, emb.shape[1]])
        loss, fraction = fn(y, e, soft_margin=soft_margin)
        grad = tf.gradients(loss, e)[0]
        with tf.compat.v1.Session(graph=graph) as session:
            trace = tf.compat.v1.RunMetadata()
            options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
            feed = {y: labels, e: emb}
            session.run([loss, fraction, grad], feed, options=options, run_metadata=trace)
    sizes = [
        math.prod(dim.size for dim in out.tensor_description.shape.dim)
        for device in trace.step_stats.dev_stats
        for node in device.node_stats
        for out in node.output
    ]
    assert len(sizes) > 100  # the trace did record the run
    return max(sizes)


@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_cubic_tensor_in_graph(strategy, soft):
    b = 50
    fn = getattr(losses, f"{strategy}_triplet_loss")
    assert _largest_tensor(fn, b, soft) <= b * b  # both mining paths, forward and backward


RUN_TIME_LABELS = {  # B = 40
    "pk": np.arange(40, dtype=np.int32) % 10,  # 4 per class: slots
    "random3": np.random.default_rng(90).integers(0, 3, 40).astype(np.int32),  # ~13: buckets
    "one_big": (np.arange(40) >= 38).astype(np.int32),  # 38 + 2
}


RUN_TIME_CASES = [  # (strategy, soft, labels, path): every engine once
    ("batch_hard", False, "random3", "auto"),
    ("batch_all", False, "pk", "auto"),  # slots
    ("batch_all", True, "random3", "auto"),  # soft: slots
    ("batch_all", False, "random3", "auto"),  # buckets
    ("batch_all", False, "one_big", "sorted"),
    ("semi_hard", False, "pk", "auto"),  # slots
    ("semi_hard", True, "random3", "auto"),  # buckets
    ("semi_hard", False, "one_big", "auto"),  # buckets, K = 37: the [B, 2K] pairs
    ("semi_hard", False, "one_big", "sorted"),
]


@pytest.mark.parametrize("case", RUN_TIME_CASES, ids=lambda c: "-".join(map(str, c)))
def test_no_cubic_tensor_at_run_time(case, force_path):
    """Actual sizes, for every engine. The bound is 2 B^2: semi-hard's [B, 2K] gradient
    pairs (K < B); a [B, B, B] tensor would be B / 2 = 20 times over it."""
    strategy, soft, labels, path = case
    b = 40
    force_path(path)
    emb = np.random.default_rng(91).normal(size=(b, 16)).astype(np.float32)
    fn = named(strategy)
    assert _largest_tensor_at_run_time(fn, RUN_TIME_LABELS[labels], emb, soft) <= 2 * b * b


def test_run_time_check_detects_cubes():
    """Positive controls: the dense forms, and a cube inside a loop body."""
    b = 40
    emb = np.random.default_rng(92).normal(size=(b, 16)).astype(np.float32)
    labels = RUN_TIME_LABELS["pk"]
    assert _largest_tensor_at_run_time(bench.DENSE["batch_all"], labels, emb) >= b**3
    assert _largest_tensor_at_run_time(bench.DENSE["semi_hard"], labels, emb) >= b**3
    assert _largest_tensor_at_run_time(_cubic_inside_a_while_loop, labels, emb) >= b**3


def test_cubic_check_detects_dense_forms():
    """The check above can see a B^3 tensor: the dense references have one."""
    b = 50
    assert _largest_tensor(bench.DENSE["batch_all"], b, False) >= b**3
    assert _largest_tensor(bench.DENSE["semi_hard"], b, False) >= b**3


def _cubic_inside_a_while_loop(labels, emb, soft_margin=False):
    """A deliberate [B, B, B] tensor that exists only inside a tf.while_loop body."""
    d = losses.pairwise_distances(emb)

    def body(i, total):
        cube = tf.nn.relu(d[:, :, None] - d[:, None, :] + 1.0)  # [B, B, B]
        return i + 1, total + tf.reduce_mean(cube)

    _, total = tf.while_loop(lambda i, _: i < 3, body, (tf.constant(0), tf.zeros([], d.dtype)))
    return total, tf.zeros([], d.dtype)


def test_cubic_check_looks_inside_loop_bodies():
    """Positive control for the walk into loop bodies: the cube is invisible at the top level
    of the graph, and the check still finds it (forward body, and backward body)."""
    b = 50
    top_level = tf.function(_cubic_inside_a_while_loop).get_concrete_function(
        tf.TensorSpec([b], tf.int32), tf.TensorSpec([b, 16], tf.float32)
    )
    ops = top_level.graph.get_operations()
    assert any(op.type in ("While", "StatelessWhile") for op in ops)
    sizes = [
        out.shape.num_elements() for op in ops for out in op.outputs if out.shape.is_fully_defined()
    ]
    assert max(sizes) < b**3
    assert _largest_tensor(_cubic_inside_a_while_loop, b, False) >= b**3


# --------------------------------------------------------------------------------------------
# 4. tf.function, XLA, dtypes, API
# --------------------------------------------------------------------------------------------


def test_tf_function_with_unknown_batch_size():
    """Keras traces train steps with a None batch dimension."""
    spec = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 4], tf.float32))
    fns = {
        (s, soft): tf.function(
            lambda y, e, s=s, soft=soft: losses.triplet_loss(y, e, s, soft_margin=soft),
            input_signature=spec,
        )
        # Every code path: the soft margin only differs in its own loop for batch-all.
        for s, soft in [*((s, False) for s in STRATEGIES), ("batch_all", True)]
    }
    for b, n_classes, seed in ((9, 3, 30), (30, 4, 31)):
        labels, emb = random_batch(b, n_classes, 4, seed, np.float32)
        for (strategy, soft), fn in fns.items():
            want = brute_force(labels, emb, strategy, soft_margin=soft)
            assert_close(fn(labels, emb), want, np.float32)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_jit_compile(strategy):
    """XLA on CPU, both mining paths (chosen by the labels); soft margin where it has its
    own code path (batch-all's loop), hinge everywhere."""
    softs = (False, True) if strategy == "batch_all" else (False,)

    @tf.function(jit_compile=True)
    def step(labels, emb):
        out = []
        for soft in softs:
            with tf.GradientTape() as tape:
                tape.watch(emb)
                loss, fraction = losses.triplet_loss(
                    labels, emb, strategy, soft_margin=soft, jit_compile=True
                )
            out.append((loss, fraction, tape.gradient(loss, emb)))
        return out

    b = 48
    _, emb = random_batch(b, 1, 6, 40)
    small = np.arange(b, dtype=np.int32) % 12  # 4 per class: positive slots
    big = (np.arange(b) >= 44).astype(np.int32)  # 44 + 4: sorted rows
    assert max(engines.SLOT_LIMIT.values()) < 44 - 1
    for labels in (small, big):
        results = step(tf.constant(labels), tf.constant(emb))
        for soft, (loss, fraction, grad) in zip(softs, results, strict=True):
            assert_close(
                [loss, fraction], brute_force(labels, emb, strategy, soft_margin=soft), emb.dtype
            )
            _, want_grad = value_and_grad(
                bench.DENSE[strategy], labels, emb, margin=MARGIN, soft_margin=soft
            )
            np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-7, atol=1e-10)


def test_the_engine_bench_names_is_the_one_auto_runs_at_the_slot_limit():
    """``bench losses`` labels its rows with engines.auto_engine. At the crossover, P x K
    batches whose anchors have exactly SLOT_LIMIT positives, and one more, it names the
    engine that "auto" runs there (engines.choose, eagerly: only the taken branch runs);
    for the one-pick strategies, the form under XLA too."""
    for strategy, limit in engines.SLOT_LIMIT.items():
        for positives in (limit - 1, limit, limit + 1):
            labels = tf.constant(np.repeat(np.arange(4, dtype=np.int32), positives + 1))
            ran = []
            blocks = pieces.class_blocks(labels, int(labels.shape[0]))
            engines.choose(
                strategy, blocks, "auto", False, lambda name, ran=ran: ran.append(name) or 0
            )
            b = int(labels.shape[0])
            assert engines.auto_engine(strategy, b, b, positives) == ran[0]
            if native.runs(False):  # every class size
                assert ran == ["native"], (strategy, positives)
            else:
                assert ran == ["slots" if positives <= limit else "buckets"], (strategy, positives)
    # Batch-hard / easy-positive: the form of one_pick_engine's rule, dense under XLA.
    for strategy in ("batch_hard", "easy_positive"):
        assert engines.auto_engine(strategy, 4096, 4096, 3) == "blocked"
        assert engines.auto_engine(strategy, 4096, 4096, 3, jit_compile=True) == "dense"


def test_engine_is_an_explicit_argument():
    """The caller says whether it compiles; a bad engine, or buckets under XLA, is refused
    before tracing (its label-dependent shapes cannot compile)."""
    labels, emb = random_batch(12, 3, 4, 41, np.float32)
    for strategy in STRATEGIES:
        with pytest.raises(ValueError, match="engine='fast' is not valid"):
            losses.triplet_loss(labels, emb, strategy, engine="fast")
        with pytest.raises(ValueError, match="cannot compile with XLA"):
            losses.triplet_loss(labels, emb, strategy, engine="buckets", jit_compile=True)
    # jit_compile=True outside XLA takes the row sort: slower, never wrong.
    for strategy in ("batch_all", "semi_hard"):
        got = losses.triplet_loss(labels, emb, strategy, jit_compile=True)
        assert_close(got, brute_force(labels, emb, strategy), np.float32)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_embeddings_compute_in_float32(dtype):
    labels, emb = random_batch(20, 4, 8, 50, np.float32)
    low = tf.cast(emb, dtype)
    for strategy in STRATEGIES:
        loss, fraction = losses.triplet_loss(labels, low, strategy)
        assert loss.dtype == fraction.dtype == tf.float32
        want = losses.triplet_loss(labels, tf.cast(low, tf.float32), strategy)
        np.testing.assert_array_equal([loss, fraction], want)
        with tf.GradientTape() as tape:
            tape.watch(low)
            loss, _ = losses.triplet_loss(labels, low, strategy, soft_margin=True)
        grad = tape.gradient(loss, low)
        assert grad.dtype == dtype and np.all(np.isfinite(tf.cast(grad, tf.float32)))


def test_float64_stays_float64():
    labels, emb = random_batch(10, 3, 4, 51)
    for strategy in STRATEGIES:
        assert all(t.dtype == tf.float64 for t in losses.triplet_loss(labels, emb, strategy))


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        losses.triplet_loss([0, 0, 1], np.zeros((3, 2), np.float32), strategy="hardest")
    for name in STRATEGIES:
        assert name in str(err.value)


def test_named_functions_match_dispatch():
    labels, emb = random_batch(16, 4, 3, 52)
    for strategy in STRATEGIES:
        named = getattr(losses, f"{strategy}_triplet_loss")(labels, emb, 0.3, True, False)
        np.testing.assert_array_equal(
            named, losses.triplet_loss(labels, emb, strategy, 0.3, True, False)
        )


def test_pairwise_distances():
    _, emb = random_batch(9, 1, 5, 53)
    want2 = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.testing.assert_allclose(losses.pairwise_distances(emb, squared=True), want2, atol=1e-12)
    got = losses.pairwise_distances(emb)
    np.testing.assert_allclose(got, np.sqrt(want2), atol=1e-12)
    assert got.shape == (9, 9) and np.all(np.diag(got) == 0)
    assert losses.pairwise_distances(tf.cast(emb, tf.float16)).dtype == tf.float32


# --------------------------------------------------------------------------------------------
# 5. The benchmark
# --------------------------------------------------------------------------------------------


def test_benchmark_runs_and_writes_csv(tmp_path, capsys):
    path = tmp_path / "sub" / "losses.csv"
    args = ["losses", "--sizes", "24", "--repeats", "2", "--warmup", "1", "--memory", "off"]
    assert bench_cli.main([*args, "--labels", "pk,random2", "--csv", str(path)]) == 0
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == loss_report.CSV_COLUMNS
        rows = list(reader)
    peer = [r for r in rows if r["impl"] == "pml"]  # with torch: its three strategies
    assert len(peer) == (2 * 3 if peer else 0)
    rows = [r for r in rows if r["impl"] != "pml"]
    assert len(rows) == 2 * 7  # per regime (and size): 5 strategies ours + 2 dense
    for row in rows:
        assert float(row["ms_median"]) > 0 and "MISMATCH" not in row["note"]
        if row["strategy"] == "batch_hard":
            assert float(row["time_vs_batch_hard"]) == 1.0
    key = ("labels", "batch_size", "strategy")
    ours = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "ours"}
    for r in rows:
        if r["impl"] == "dense":  # same triplets counted: same loss
            mine = float(ours[tuple(r[k] for k in key)]["loss"])
            assert float(r["loss"]) == pytest.approx(mine, rel=1e-5)
    by_labels = {(r["labels"], r["batch_size"]): r for r in rows}
    assert by_labels["pk", "24"]["images_per_class"] == "4"
    engine = {(r["labels"], r["strategy"], r["impl"]): r["engine"] for r in rows}
    assert engine["pk", "batch_hard", "ours"] == engine["pk", "easy_positive", "ours"] == "dense"
    assert (
        engine["pk", "batch_all", "ours"] == ("native" if native.runs(False) else "slots")
        and engine["pk", "batch_all", "dense"] == "-"
    )
    # ~11 positives per anchor
    large = "native" if native.runs(False) else "buckets"
    assert engine["random2", "semi_hard", "ours"] == large
    assert by_labels["pk", "24"]["classes"] == "6"
    assert by_labels["random2", "24"]["images_per_class"] == ""
    assert int(by_labels["random2", "24"]["largest_class"]) >= 12  # 2 classes share 24
    out = capsys.readouterr().out
    assert re.search(r"\|\s*labels\s*\|\s*B \| strategy\s*\| engine\s*\|", out)
    assert str(path) in out
    assert "| P x 4 " in out and "| 2 random (max " in out


def test_benchmark_memory_from_a_second_process(tmp_path, monkeypatch):
    """CPU allocator without statistics: the peaks come from a second process, run with the
    BFC allocator and the same cases (simulated here in-process: the real one costs a
    TensorFlow start-up), and the memory ratios are computed from them."""
    calls = []

    def second_process(argv, env, check, stdout):
        assert argv[:3] == [sys.executable, "-m", "tripletlab.bench.losses"]
        assert env["TF_CPU_ALLOCATOR_USE_BFC"] == "true" and check
        calls.append(argv)
        with monkeypatch.context() as child:
            peaks = iter([4.0, 8.0, 8.0, 6.0, 6.0, 5.0, 5.0])  # per case, in row order
            child.setattr(bench, "peak_memory_mb", lambda *_: next(peaks))
            assert bench.main(argv[3:]) == 0

    monkeypatch.setattr(bench, "peak_memory_mb", lambda *_: float("nan"))  # no statistics
    monkeypatch.setattr(bench.subprocess, "run", second_process)
    path = tmp_path / "losses.csv"
    args = ["--sizes", "8", "--repeats", "1", "--warmup", "1", "--labels", "random2", "--margin"]
    assert bench.main([*args, "0.3", "--csv", str(path)]) == 0
    assert len(calls) == 1 and "--memory-json" in calls[0] and "0.3" in calls[0]
    with path.open() as f:
        rows = {(r["strategy"], r["impl"]): r for r in csv.DictReader(f)}
    assert float(rows["batch_hard", "ours"]["peak_mb"]) == 4.0
    assert float(rows["batch_all", "ours"]["mem_vs_batch_hard"]) == 2.0
    assert float(rows["semi_hard", "ours"]["mem_vs_batch_hard"]) == 1.5


def test_benchmark_label_regimes():
    assert bench.DEFAULT_LABELS == ("pk", "random10", "random100")
    assert bench.parse_args([]).labels == ["pk", "random10", "random100"]
    assert bench.parse_labels("pk") is None and bench.parse_labels("random7") == 7
    for bad in ("random", "random0", "pk4", "Random10"):
        with pytest.raises(ValueError):
            bench.parse_labels(bad)
    with pytest.raises(SystemExit):
        bench.parse_args(["--labels", "pk,random0"])
    labels, emb = loss_cases.make_batch(64, 8, 4, labels="random10")
    assert labels.shape == (64,) and emb.shape == (64, 8) and labels.numpy().max() < 10
    labels, _ = loss_cases.make_batch(64, 8, 4, labels="pk")
    np.testing.assert_array_equal(np.bincount(labels.numpy()), np.full(16, 4))
    # clustered: positives nearer than negatives on average; unit norm like random ones
    labels, emb = loss_cases.make_batch(64, 8, 4, labels="random4", embeddings="clustered")
    np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=1), 1, rtol=1e-6)
    d = losses.pairwise_distances(emb).numpy()
    same = labels.numpy()[:, None] == labels.numpy()[None, :]
    assert d[same & ~np.eye(64, dtype=bool)].mean() < d[~same].mean() - 0.3
    with pytest.raises(ValueError):
        loss_cases.make_batch(8, 2, 4, embeddings="uniform")


def test_benchmark_skips_dense_above_cap(tmp_path):
    path = tmp_path / "losses.csv"
    args = ["--sizes", "8", "--repeats", "1", "--dense-cap-gb", "0", "--labels", "pk"]
    assert bench.main([*args, "--memory", "off", "--csv", str(path)]) == 0
    with path.open() as f:
        dense = [r for r in csv.DictReader(f) if r["impl"] == "dense"]
    assert len(dense) == 2 and all(r["note"].startswith("skipped") for r in dense)
    assert all(r["ms_median"] == "" for r in dense)


def test_bench_dispatcher(capsys):
    assert bench_cli.main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert bench_cli.main(["--help"]) == 0
    assert "losses" in capsys.readouterr().out
    assert set(bench_cli.COMMANDS) >= {"losses", "train"}


def test_benchmark_cross_batch_memory_rows(tmp_path, capsys):
    """--xbm BxM: every strategy on the same [B, B + M] problem, ratios to batch-hard with
    that memory; the memory's losses differ from the batch's alone (the columns are used)."""
    path = tmp_path / "losses.csv"
    args = ["--sizes", "12", "--xbm", "12x20", "--repeats", "1", "--warmup", "1"]
    assert bench.main([*args, "--labels", "random3", "--memory", "off", "--csv", str(path)]) == 0
    with path.open() as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["impl"] != "pml"]  # the peer's, when torch is installed
    with_memory = {r["strategy"]: r for r in rows if r["memory_size"] == "20"}
    alone = {r["strategy"]: r for r in rows if r["memory_size"] == "0" and r["impl"] == "ours"}
    assert set(with_memory) == set(bench.ours()) and all(
        r["impl"] == "ours" for r in with_memory.values()
    )
    assert float(with_memory["batch_hard"]["time_vs_batch_hard"]) == 1.0
    assert int(with_memory["batch_hard"]["largest_class"]) > int(
        alone["batch_hard"]["largest_class"]
    )
    labels, emb, memory = loss_cases.memory_batch(bench.parse_args(args), "random3", 12, 20)
    want = losses.batch_hard_triplet_loss(labels, emb, margin=0.5, memory=memory)[0]
    assert float(with_memory["batch_hard"]["loss"]) == pytest.approx(float(want), rel=1e-6)
    out = capsys.readouterr()
    assert "| 12 + 20 memory |" in out.out.replace("  ", "")
    assert "pytorch-metric-learning" in out.err or "pml" in out.out
    with pytest.raises(SystemExit):
        bench.parse_args(["--xbm", "256"])
