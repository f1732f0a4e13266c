"""Batch-hard and easy-positive's engines (tripletlab/losses/picks.py): the size rule of
engines.one_pick_engine, its branches against the brute force, and ``bench peer``. The forms
forced at small sizes run in test_engines.py's brute-force and gradient tests."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow as tf

from tests.losses.test_engines import (
    MARGIN,
    SMALL_BLOCK,
    assert_close,
    brute_force,
    brute_force_grad,
    random_batch,
)
from tripletlab import losses
from tripletlab.bench import __main__ as bench_cli
from tripletlab.losses import engines, reference


def test_one_pick_rule():
    """Batch-hard / easy-positive: dense [B, N] scores up to DENSE_ELEMENTS, row blocks
    beyond (B = 4096 and the 1024 + 4096 memory problem), dense under XLA (the blocked loop's
    last block is shorter), decided at run time when a size is unknown; the mining engines
    are refused for them and theirs for batch-all / semi-hard."""
    rule = engines.one_pick_engine
    assert [rule(b, b) for b in (64, 256, 1024, 2048)] == ["dense"] * 4
    assert rule(256, 256 + 4096) == rule(512, 512 + 4096) == "dense"
    assert rule(4096, 4096) == rule(1024, 1024 + 4096) == rule(2049, 2049) == "blocked"
    assert rule(4096, 4096, jit_compile=True) == "dense"
    assert rule(4096, 4096, "dense") == "dense" and rule(64, 64, "blocked") == "blocked"
    assert rule(None, 64) is None and rule(64, None, "slots") is None
    assert 1 <= int(engines.block_rows(1024 + 4096)) * (1024 + 4096) <= engines.BLOCK_ELEMENTS
    labels, emb = random_batch(12, 3, 4, 41, np.float32)
    with pytest.raises(ValueError, match="cannot compile with XLA"):
        losses.batch_hard_triplet_loss(labels, emb, engine="blocked", jit_compile=True)
    for strategy in ("batch_all", "semi_hard"):
        with pytest.raises(ValueError, match="is for batch_hard / easy_positive"):
            losses.triplet_loss(labels, emb, strategy, engine="dense")


@pytest.mark.parametrize("strategy", ["batch_hard", "easy_positive"])
def test_one_pick_rule_at_run_time_matches_brute_force(strategy, monkeypatch):
    """Sizes unknown when traced: the rule runs as a tf.cond, and both of its branches (a
    small batch dense, a larger one blocked, by a lowered limit) give the brute force."""
    monkeypatch.setattr(engines, "DENSE_ELEMENTS", 200)
    monkeypatch.setattr(engines, "BLOCK_ELEMENTS", SMALL_BLOCK)
    fn = getattr(losses, f"{strategy}_triplet_loss")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec(None)])
    def step(labels, emb):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss, fraction = fn(labels, emb, margin=MARGIN)
        return loss, fraction, tape.gradient(loss, emb)

    for b, seed in ((12, 50), (40, 51)):  # B N = 144 <= 200: dense; 1600: blocked
        labels, emb = random_batch(b, 4, 5, seed, np.float32)
        loss, fraction, grad = step(labels, emb)
        assert_close([loss, fraction], brute_force(labels, emb, strategy), np.float32)
        want = brute_force_grad(labels, emb, strategy)
        np.testing.assert_allclose(grad.numpy(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_one_pick_rule_blocked_at_full_size_matches_brute_force():
    """The size the rule blocks at by itself, B = 1024 with a memory of 4096 ([1024, 5120],
    float32, D = 4 so the brute force fits), and a dense one, B = 2048: loss, fraction and
    gradient of both one-pick strategies against the brute force."""
    rng = np.random.default_rng(52)
    for b, m, classes in ((1024, 4096, 10), (2048, 0, 512)):
        labels = rng.integers(0, classes, b + m).astype(np.int32)
        emb = (rng.normal(size=(b + m, 4)) / 2).astype(np.float32)
        memory = (labels[b:], emb[b:]) if m else None
        labels, emb = labels[:b], emb[:b]
        assert engines.one_pick_engine(b, b + m) == ("blocked" if m else "dense")
        for strategy in ("batch_hard", "easy_positive"):
            fn = getattr(losses, f"{strategy}_triplet_loss")
            (loss, fraction), grad = value_and_grad_pair(fn, labels, emb, memory=memory)
            want = reference.triplet_loss(labels, emb, strategy, MARGIN, memory=memory)
            assert_close([loss, fraction], want, np.float32)
            want_grad = reference.triplet_loss_grad(labels, emb, strategy, MARGIN, memory=memory)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-6)


def value_and_grad_pair(fn, labels, emb, **kwargs):
    """((loss, fraction), d loss / d emb) of fn at (labels, emb), as numpy."""
    emb = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss, fraction = fn(tf.constant(labels), emb, margin=MARGIN, **kwargs)
    return (float(loss), float(fraction)), tape.gradient(loss, emb).numpy()


def test_bench_peer_writes_both_sides(tmp_path, capsys):
    """bench peer: ours and the dense TF form (and the peer, with torch) on the same batches,
    rounds kept, the losses of ours and the dense form equal, the engine named."""
    out = tmp_path / "bench_losses_t"
    argv = ["peer", "--cases", "pk:16", "random3:12+20", "--rounds", "2", "--repeats", "1"]
    assert bench_cli.main([*argv, "--strategies", "batch_hard", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    impls = {(r["labels"], r["impl"]) for r in rows}
    assert {("pk", "ours"), ("pk", "dense TF"), ("random3", "dense TF")} <= impls
    assert all(len(r["round_ms"].split()) == 2 for r in rows)
    assert {r["engine"] for r in rows if r["impl"] == "ours"} == {"dense"}
    text = out.with_suffix(".md").read_text()
    assert "**Commit:**" in text and "| 12 + 20 memory |" in text and "| NO (" not in text
    assert "bench peer --cases pk:16 random3:12+20" in text and text in capsys.readouterr().out


@pytest.mark.parametrize("negatives", ["semi_hard", "hard"])
def test_easy_positive_forms_match_brute_force(negatives, monkeypatch):
    """easy_positive's dense and blocked forms (blocks of 100 // N rows, the last shorter),
    with and without a memory: loss, fraction and gradient as the brute force, for both
    negative rules. Bug: a form that loses ``negatives`` (hard mined as semi-hard)."""
    monkeypatch.setattr(engines, "BLOCK_ELEMENTS", SMALL_BLOCK)
    rng = np.random.default_rng(53)
    labels = rng.integers(0, 4, 40).astype(np.int32)
    emb = rng.normal(size=(40, 5)) / 2
    for memory in (None, (labels[24:], emb[24:])):
        batch = (labels, emb) if memory is None else (labels[:24], emb[:24])
        want = {
            rule: reference.triplet_loss(
                *batch, "easy_positive", MARGIN, memory=memory, negatives=rule
            )
            for rule in ("semi_hard", "hard")
        }
        assert want["semi_hard"] != want["hard"]  # the batch tells the rules apart
        want_grad = reference.triplet_loss_grad(
            *batch, "easy_positive", MARGIN, memory=memory, negatives=negatives
        )
        for engine in ("dense", "blocked"):
            got, grad = value_and_grad_pair(
                losses.easy_positive_triplet_loss,
                *batch,
                negatives=negatives,
                memory=memory,
                engine=engine,
            )
            assert_close(got, want[negatives], np.float64)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_a_forced_form_is_the_form_that_runs():
    """engine="blocked" runs the loop over row blocks (a While op in the traced graph) even
    where the rule would score densely, and "dense" neither loops nor branches: ``bench
    peer`` and the losses table compare the forms by forcing them. Bug: a forced form that
    falls through to the run-time rule (a tf.cond of both)."""
    labels, emb = random_batch(12, 3, 4, 54, np.float32)

    def op_types(engine):
        fn = tf.function(lambda y, e: losses.batch_hard_triplet_loss(y, e, engine=engine))
        graph = fn.get_concrete_function(tf.constant(labels), tf.constant(emb)).graph
        return {op.type for op in graph.get_operations()}

    loops, branches = {"While", "StatelessWhile"}, {"If", "StatelessIf"}
    blocked = op_types("blocked")
    assert loops & blocked and not branches & blocked
    assert not (loops | branches) & op_types("dense")
