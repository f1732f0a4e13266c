"""Batch-all and semi-hard's blocked form (tripletlab/losses/blocked.py): the size rule of
engines.mining_form, and the form forced at small sizes (tiny blocks, the last one shorter)
against the brute force and the dense form: loss, fraction and gradient."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tests.losses.test_engines import _all_ops, assert_close, tie_batch
from tripletlab import losses
from tripletlab.losses import engines, native, reference

MINED = ("batch_all", "semi_hard")


def _labels(pattern, n, rng):
    """P x 4 (shuffled; slots) or 3 large classes (~n / 3 each; buckets)."""
    if pattern == "pk":
        return rng.permutation(np.arange(n) // 4).astype(np.int32)
    return rng.integers(0, 3, n).astype(np.int32)


def _value_and_grad(strategy, labels, emb, **kwargs):
    """(loss, fraction) and d loss / d emb of ``strategy``, as numpy."""
    emb = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss, fraction = losses.triplet_loss(tf.constant(labels), emb, strategy, **kwargs)
    return (float(loss), float(fraction)), tape.gradient(loss, emb).numpy()


@pytest.fixture
def force_form(monkeypatch):
    """force_form("dense") or force_form("blocked", rows, n): the batch-all / semi-hard
    calls from here on take that form (blocked: ``rows`` anchors a block for n columns)."""

    def force(form, rows=1, n=1):
        monkeypatch.setattr(engines, "mining_form", lambda *_, **__: form)
        monkeypatch.setattr(engines, "DENSE_ELEMENTS", 2**62 if form == "dense" else 0)
        monkeypatch.setattr(engines, "BLOCK_ELEMENTS", rows * n)

    return force


@pytest.mark.parametrize("pattern", ["pk", "three_classes"])
@pytest.mark.parametrize("strategy", MINED)
def test_blocked_form_matches_brute_force(strategy, pattern, force_form, monkeypatch):
    """B = 13 anchors in blocks of 1, 3 (the last of 1) or 8 (then 5) rows, with and
    without a memory of 7, hinge and soft margin, squared or not, float64: loss, fraction
    and gradient as the brute force. Engines as "auto" picks them (slots for P x 4, buckets
    for ~7 positives, in chunks of 10 distances), and slots forced for the large classes."""
    monkeypatch.setattr(engines, "CHUNK_ELEMENTS", 10)
    rng = np.random.default_rng(80)
    labels = _labels(pattern, 20, rng)
    emb = rng.normal(size=(20, 3)) / 2
    combos = itertools.product((False, True), repeat=3)
    for i, (with_memory, soft, squared) in enumerate(combos):
        memory = (labels[13:], emb[13:]) if with_memory else None
        batch = (labels[:13], emb[:13])
        n = 20 if with_memory else 13
        options = {"margin": 0.5, "squared": squared, "soft_margin": soft}
        want = reference.triplet_loss(*batch, strategy, memory=memory, **options)
        want_grad = reference.triplet_loss_grad(*batch, strategy, memory=memory, **options)
        assert np.abs(want_grad).max() > 0
        force_form("blocked", (1, 3, 8)[i % 3], n)
        for engine in ["auto"] + (["slots"] if pattern != "pk" and i % 4 == 1 else []):
            got, grad = _value_and_grad(strategy, *batch, memory=memory, engine=engine, **options)
            assert_close(got, want, np.float64)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strategy", MINED)
def test_blocked_form_with_ties_matches_dense(strategy, force_form):
    """tie_batch (integer line, margin 1: negatives exactly at a positive's distance and at
    d_ap + margin, coinciding embeddings), blocks of 3 rows, float32 and float64: loss and
    fraction as the brute force, the gradient as the dense form's (same picks among ties)."""
    labels, emb = tie_batch()
    for dtype, squared in itertools.product((np.float64, np.float32), (False, True)):
        options = {"margin": 1.0, "squared": squared}
        want = reference.triplet_loss(labels, emb, strategy, **options)
        force_form("dense")
        dense, dense_grad = _value_and_grad(strategy, labels, emb.astype(dtype), **options)
        force_form("blocked", 3, len(labels))
        got, grad = _value_and_grad(strategy, labels, emb.astype(dtype), **options)
        assert_close(got, want, dtype)
        assert_close(dense, want, dtype)
        np.testing.assert_allclose(grad, dense_grad, rtol=1e-5, atol=1e-6)


def _largest_static_tensor(strategy, b, m):
    """Elements of the largest fully known tensor in the traced forward + backward pass of
    ``strategy`` on b anchors and m memory entries (D = 4)."""

    @tf.function
    def step(labels, emb, memory_labels, memory_emb):
        memory = (memory_labels, memory_emb) if m else None
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, _ = losses.triplet_loss(labels, emb, strategy, memory=memory)
        return loss, tape.gradient(loss, emb)

    specs = [tf.TensorSpec([b], tf.int32), tf.TensorSpec([b, 4], tf.float32)]
    specs += [tf.TensorSpec([m], tf.int32), tf.TensorSpec([m, 4], tf.float32)]
    graph = step.get_concrete_function(*specs).graph
    return max(
        out.shape.num_elements()
        for op in _all_ops(graph)
        for out in op.outputs
        if out.shape.is_fully_defined()
    )


def test_the_rule_blocks_beyond_dense_elements():
    """Traced at the real limits: beyond DENSE_ELEMENTS distances (2049 x 2049, or a memory:
    1024 x 5120) no tensor is bigger than the [N, D] columns (the [R, N] blocks' shapes are
    known only at run time); the rows of a block: all of them up to the limit (2048 x 2048),
    BLOCK_ELEMENTS / N beyond. Bug: a rule that never blocks, or a blocked form that still
    builds [B, N]."""
    assert engines.DENSE_ELEMENTS == 2048 * 2048
    for strategy in MINED:
        assert _largest_static_tensor(strategy, 2049, 0) <= 2049 * 4
    assert _largest_static_tensor("semi_hard", 1024, 4096) <= 5120 * 4
    assert int(engines.mining_block_rows(2048, 2048)) == 2048
    assert int(engines.mining_block_rows(512, 512 + 4096)) == 512
    assert int(engines.mining_block_rows(2049, 2049)) == engines.BLOCK_ELEMENTS // 2049
    assert int(engines.mining_block_rows(1024, 1024 + 4096)) == engines.BLOCK_ELEMENTS // 5120
    assert int(engines.mining_block_rows(70000, 70000)) == 3  # B N > 2^31: no overflow


def test_mining_form_rule_and_the_bench_engine_column():
    """mining_form: blocked (one block up to DENSE_ELEMENTS distances), dense under XLA and
    for the row sort; ``bench losses`` names the engine, "blocked" first when there is more
    than one block ("blocked slots")."""
    form = engines.mining_form
    assert form() == form("slots") == form("native") == form("buckets") == "blocked"
    assert form(jit_compile=True) == form("sorted") == form("slots", jit_compile=True) == "dense"
    small, large = ("native", "native") if native.runs(False) else ("slots", "buckets")
    assert engines.auto_engine("batch_all", 1024, 1024, 3) == small
    assert engines.auto_engine("batch_all", 4096, 4096, 3) == f"blocked {small}"
    assert engines.auto_engine("semi_hard", 4096, 4096, 9) == f"blocked {large}"
    assert engines.auto_engine("semi_hard", 1024, 1024, 9) == large
    assert engines.auto_engine("semi_hard", 4096, 4096, 9, jit_compile=True) == "sorted"


@pytest.mark.parametrize("strategy", MINED)
def test_rule_at_run_time_matches_brute_force(strategy, monkeypatch):
    """Sizes unknown when traced: the rows of a block are decided at run time; a small batch
    (one block) and a larger one (by a lowered limit, blocks of 2 rows) give the brute
    force."""
    monkeypatch.setattr(engines, "DENSE_ELEMENTS", 100)
    monkeypatch.setattr(engines, "BLOCK_ELEMENTS", 2 * 14)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec(None)])
    def step(labels, emb):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, fraction = losses.triplet_loss(labels, emb, strategy)
        return loss, fraction, tape.gradient(loss, emb)

    rng = np.random.default_rng(81)
    for b in (8, 14):  # B N = 64 <= 100: one block; 196: blocks of 2 rows
        labels = _labels("pk", b, rng)
        emb = (rng.normal(size=(b, 3)) / 2).astype(np.float32)
        loss, fraction, grad = step(labels, emb)
        assert_close([loss, fraction], reference.triplet_loss(labels, emb, strategy), np.float32)
        want = reference.triplet_loss_grad(labels, emb, strategy)
        np.testing.assert_allclose(grad.numpy(), want, rtol=1e-4, atol=1e-6)
