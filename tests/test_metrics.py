"""Tests for tripletlab.metrics: hand-computed cases and a brute-force numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tripletlab.errors import ConfigError, DataError
from tripletlab.metrics import (
    evaluate_embeddings,
    knn_accuracy,
    retrieval_metrics,
    shares_classes,
)

KEYS = [
    "precision_at_1",
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
]


# ---------------------------------------------------------------- brute-force references


def _ref_retrieval(
    emb: np.ndarray, labels: np.ndarray, ks=(1, 2, 4, 8), queries=None
) -> dict[str, float]:
    """Per-query loops over a full float64 distance matrix: slow, obviously correct.
    ``queries``: the items that are queries (all by default); the gallery is every item."""
    emb = np.asarray(emb, np.float64)
    n = len(emb)
    dist = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    hits = {k: [] for k in ks}
    aps = []
    for q in range(n) if queries is None else queries:
        r = int((labels == labels[q]).sum()) - 1
        if r == 0:
            continue
        order = np.argsort(dist[q], kind="stable")[: n - 1]
        rel = labels[order] == labels[q]
        for k in ks:
            hits[k].append(rel[:k].any())
        ap = sum(rel[:i].sum() / i for i in range(1, r + 1) if rel[i - 1]) / r
        aps.append(ap)
    out = {"precision_at_1": float(np.mean(hits[1]))}
    out.update({f"recall_at_{k}": float(np.mean(hits[k])) for k in ks})
    out["map_at_r"] = float(np.mean(aps))
    return out


def _ref_knn(train, train_lab, test, test_lab, k):
    """k-NN majority vote; ties go to the tied class seen first in distance order."""
    correct = 0
    for x, y in zip(test, test_lab, strict=True):
        order = np.argsort(((train - x) ** 2).sum(-1), kind="stable")[:k]
        nn = train_lab[order]
        counts = {c: int((nn == c).sum()) for c in nn}
        best = max(counts.values())
        pred = next(c for c in nn if counts[c] == best)
        correct += pred == y
    return correct / len(test)


# ---------------------------------------------------------------- retrieval: by hand


def test_points_on_a_line_by_hand():
    # x:      0  1  2.5  5      labels A A B A.  B is alone (R = 0): excluded everywhere.
    # q0 (0): nearest 1(A) 2.5(B) 5(A); R=2 -> rel 1,0 -> AP = (1/2)(1/1)       = 0.5
    # q1 (1): nearest 0(A) 2.5(B) 5(A); R=2 -> rel 1,0 -> AP                    = 0.5
    # q3 (5): nearest 2.5(B) 1(A) 0(A); R=2 -> rel 0,1 -> AP = (1/2)(1/2)       = 0.25
    emb = np.array([[0.0], [1.0], [2.5], [5.0]])
    got = retrieval_metrics(emb, np.array([0, 0, 1, 0]))
    assert list(got) == KEYS
    assert all(type(v) is float for v in got.values())
    assert got["precision_at_1"] == pytest.approx(2 / 3)
    assert got["recall_at_1"] == pytest.approx(2 / 3)
    assert got["recall_at_2"] == pytest.approx(1.0)
    assert got["recall_at_4"] == pytest.approx(1.0)  # k > N - 1 = 3: all others are seen
    assert got["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)


def test_ties_go_to_the_lower_index_and_map_is_one_half():
    # x: 0(A) 1(B) -1(A) 3(B); every R = 1. Exact ties (small integers are exact in floats):
    # q0 (0):  1(B, idx 1) and -1(A, idx 2) tie at distance 1 -> idx 1 first: miss at 1, hit at 2
    # q1 (1):  0(A) at 1; then -1(A, idx 2) and 3(B, idx 3) tie at 2 -> idx 2 first: hit at 3
    # q2 (-1): 0(A) at 1: hit.   q3 (3): 1(B) at 2: hit.
    # AP@R with R = 1 is just "hit at rank 1": 0, 0, 1, 1 -> MAP@R = 0.5.
    emb = np.array([[0.0], [1.0], [-1.0], [3.0]])
    labels = np.array([0, 1, 0, 1])
    for chunk_size in (1, 3, 1024):  # the same ties in any chunking
        got = retrieval_metrics(emb, labels, chunk_size=chunk_size)
        assert got == pytest.approx(
            {
                "precision_at_1": 0.5,
                "recall_at_1": 0.5,
                "recall_at_2": 0.75,
                "recall_at_4": 1.0,
                "recall_at_8": 1.0,
                "map_at_r": 0.5,
            }
        )


def test_perfect_clusters_score_one_everywhere():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    labels = np.repeat([3, 7, 11], 12)  # non-contiguous ids on purpose
    emb = centers[np.searchsorted([3, 7, 11], labels)] + rng.normal(0, 0.1, (36, 2))
    got = retrieval_metrics(emb, labels, chunk_size=5)
    assert got == pytest.approx(dict.fromkeys(KEYS, 1.0))


def _missing(got: dict) -> bool:
    return set(got) == set(KEYS) and all(math.isnan(v) for v in got.values())


def test_all_lone_queries_give_missing_metrics_and_a_warning(caplog):
    with caplog.at_level("WARNING", logger="tripletlab"):
        got = retrieval_metrics(np.eye(4), np.arange(4))
    assert _missing(got)  # not 0.0: nothing could be scored
    assert "retrieval metrics are missing" in caplog.text
    # A single item is lone too.
    assert _missing(retrieval_metrics(np.ones((1, 3)), [5]))


def test_custom_ks_and_precision_without_k1():
    emb = np.array([[0.0], [1.0], [2.5], [5.0]])
    got = retrieval_metrics(emb, np.array([0, 0, 1, 0]), ks=(3, 2, 3))
    assert list(got) == ["precision_at_1", "recall_at_2", "recall_at_3", "map_at_r"]
    assert got["precision_at_1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- retrieval: vs numpy


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_for_any_chunk_size(seed):
    rng = np.random.default_rng(seed)
    n = 90
    # Uneven class sizes (R from 0 to ~30) and well-mixed classes so metrics are not 0 or 1.
    labels = rng.choice(6, size=n, p=[0.35, 0.25, 0.2, 0.1, 0.09, 0.01])
    labels[0] = 9  # a guaranteed lone query
    emb = rng.normal(size=(n, 5)) + 0.7 * labels[:, None]
    ref = _ref_retrieval(emb, labels)
    for chunk_size in (1, 7, 32, n - 1, n, 4096):
        got = retrieval_metrics(emb, labels, chunk_size=chunk_size)
        assert got == pytest.approx(ref, abs=1e-12), chunk_size
    assert 0.0 < ref["map_at_r"] < ref["recall_at_1"] < ref["recall_at_8"] < 1.0


def test_a_sample_of_queries_is_ranked_against_every_item():
    """Only the sampled items are queries; each still sees all the others as its gallery
    (not just the other sampled items), so the sample's metrics estimate the full ones."""
    rng = np.random.default_rng(3)
    n = 80
    labels = rng.integers(0, 4, size=n)
    emb = rng.normal(size=(n, 4)) + 0.8 * labels[:, None]
    queries = np.sort(rng.choice(n, size=23, replace=False))
    ref = _ref_retrieval(emb, labels, queries=queries)
    for chunk_size in (1, 5, 64):
        got = retrieval_metrics(emb, labels, chunk_size=chunk_size, queries=queries)
        assert got == pytest.approx(ref, abs=1e-12), chunk_size
    # Ranked among the sampled items alone, the queries would score otherwise.
    assert retrieval_metrics(emb[queries], labels[queries]) != pytest.approx(ref, abs=1e-6)
    # Every item as a query is the full evaluation, and so is queries=None.
    assert retrieval_metrics(emb, labels, queries=np.arange(n)) == retrieval_metrics(emb, labels)


def test_accepts_tf_tensors_and_half_precision():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 5)
    emb = (rng.normal(size=(20, 4)) + 3 * labels[:, None]).astype(np.float32)
    ref = retrieval_metrics(emb, labels)
    assert retrieval_metrics(tf.constant(emb), tf.constant(labels, tf.int32)) == ref
    for dtype in (tf.float16, tf.bfloat16):
        # Well-separated clusters: rounding to half precision cannot change any neighbour set.
        assert retrieval_metrics(tf.cast(emb, dtype), labels) == pytest.approx(ref)
    assert retrieval_metrics(emb.astype(np.float16), labels.astype(np.uint8)) == pytest.approx(ref)


@pytest.mark.parametrize(
    ("emb", "labels", "kwargs", "error"),
    [
        (np.zeros((3,)), [0, 0, 1], {}, DataError),  # not [N, D]
        (np.zeros((3, 2)), [0, 0], {}, DataError),  # length mismatch
        (np.zeros((3, 2)), [0.0, 0.0, 1.0], {}, DataError),  # float labels
        (np.zeros((0, 2)), np.zeros((0,), int), {}, DataError),  # empty
        (np.array([[0.0], [np.nan]]), [0, 0], {}, DataError),  # NaN
        (np.array([["a"], ["b"]]), [0, 0], {}, DataError),  # strings
        (np.zeros((3, 2)), [0, 0, 1], {"chunk_size": 0}, ConfigError),
        (np.zeros((3, 2)), [0, 0, 1], {"ks": ()}, ConfigError),
        (np.zeros((3, 2)), [0, 0, 1], {"ks": (1, 0)}, ConfigError),
        (np.zeros((3, 2)), [0, 0, 1], {"queries": [0, 3]}, DataError),  # out of range
        (np.zeros((3, 2)), [0, 0, 1], {"queries": [1, 1]}, DataError),  # repeated
        (np.zeros((3, 2)), [0, 0, 1], {"queries": []}, DataError),
    ],
)
def test_bad_input_raises(emb, labels, kwargs, error):
    with pytest.raises(error):
        retrieval_metrics(emb, labels, **kwargs)


# ---------------------------------------------------------------- k-NN accuracy


def test_knn_by_hand_with_tie_break():
    train = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    train_lab = np.array([0, 0, 1, 1, 1])
    # t=0.4: 3 nearest 0(A) 1(A) 2(B) -> A.  t=9: 10(B) 11(B) 2(B) -> B.
    # t=1.6 with k=2: 2(B) at 0.4, 1(A) at 0.6 -> 1 vote each: the nearest (B) wins.
    # t=1.4 with k=2: 1(A) at 0.4, 2(B) at 0.6 -> tie again, the nearest (A) wins.
    test = np.array([[0.4], [9.0], [1.6], [1.4]])
    assert knn_accuracy(train, train_lab, test[:2], [0, 1], k=3) == 1.0
    assert knn_accuracy(train, train_lab, test[2:], [1, 0], k=2) == 1.0
    assert knn_accuracy(train, train_lab, test[2:], [0, 1], k=2) == 0.0
    # k above the train size: all 5 vote, B has 3 -> B for everyone.
    assert knn_accuracy(train, train_lab, test, [1, 1, 1, 1], k=50) == 1.0
    # A test label the train set never saw is always wrong.
    assert knn_accuracy(train, train_lab, test[:1], [7], k=1) == 0.0


def test_knn_matches_brute_force_for_any_chunk_size():
    rng = np.random.default_rng(5)
    train_lab = rng.integers(0, 5, size=120)
    test_lab = rng.integers(0, 5, size=45)
    train = rng.normal(size=(120, 3)) + train_lab[:, None]
    test = rng.normal(size=(45, 3)) + test_lab[:, None]
    for k in (1, 4, 10):
        ref = _ref_knn(train, train_lab, test, test_lab, k)
        for chunk_size in (1, 8, 45, 1000):
            assert knn_accuracy(train, train_lab, test, test_lab, k, chunk_size) == ref
    assert 0.2 < _ref_knn(train, train_lab, test, test_lab, 10) < 1.0


def test_knn_bad_input():
    x = np.zeros((3, 2))
    with pytest.raises(ConfigError):
        knn_accuracy(x, [0, 1, 2], x, [0, 1, 2], k=0)
    with pytest.raises(DataError):
        knn_accuracy(x, [0, 1, 2], np.zeros((3, 4)), [0, 1, 2])


# ---------------------------------------------------------------- evaluate_embeddings


def test_evaluate_embeddings_keys():
    rng = np.random.default_rng(7)
    lab = np.repeat(np.arange(3), 6)
    emb = rng.normal(size=(18, 4)).astype(np.float32) + 5 * lab[:, None]
    only_test = evaluate_embeddings(emb, lab)
    assert list(only_test) == KEYS
    both = evaluate_embeddings(emb, lab, emb[::-1], lab[::-1], knn_k=3, chunk_size=4)
    assert list(both) == [*KEYS, "knn_accuracy"]
    assert both["knn_accuracy"] == 1.0
    with pytest.raises(ValueError):
        evaluate_embeddings(emb, lab, train_emb=emb)


# ---------------------------------------------------------------- a separate gallery


def _ref_gallery(q, q_lab, g, g_lab, ks=(1, 2, 4, 8)) -> dict[str, float]:
    """Queries against a gallery, nothing left out: per-query loops in float64."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    hits = {k: [] for k in ks}
    aps = []
    for x, y in zip(q, q_lab, strict=True):
        r = int((g_lab == y).sum())
        if r == 0:
            continue
        order = np.argsort(((g - x) ** 2).sum(-1), kind="stable")
        rel = g_lab[order] == y
        for k in ks:
            hits[k].append(rel[:k].any())
        aps.append(sum(rel[:i].sum() / i for i in range(1, r + 1) if rel[i - 1]) / r)
    out = {"precision_at_1": float(np.mean(hits[1]))}
    out.update({f"recall_at_{k}": float(np.mean(hits[k])) for k in ks})
    out["map_at_r"] = float(np.mean(aps))
    return out


def test_gallery_by_hand():
    # Gallery: 0(A) 1(B) 3(A). Queries: 0.9 (A): 1(B), 0(A), 3(A): miss, hit at 2;
    # R = 2 -> AP = (1/2)(1/2) = 0.25. 2.9 (B): 3(A), 1(B): hit at 2; R = 1 -> AP = 0.
    # 5 (C) has no gallery item: left out. A query identical to a gallery item is not left
    # out (it is another image): 3.0 (A) finds 3(A) first, then 1(B); R = 2 -> AP = 1/2.
    gallery, g_lab = np.array([[0.0], [1.0], [3.0]]), np.array([0, 1, 0])
    queries, q_lab = np.array([[0.9], [2.9], [5.0], [3.0]]), np.array([0, 1, 2, 0])
    got = retrieval_metrics(queries, q_lab, gallery_embeddings=gallery, gallery_labels=g_lab)
    assert got["precision_at_1"] == pytest.approx(1 / 3)
    assert got["recall_at_2"] == pytest.approx(1.0)
    assert got["map_at_r"] == pytest.approx((0.25 + 0.0 + 0.5) / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_gallery_matches_brute_force_for_any_chunk_size(seed):
    rng = np.random.default_rng(seed)
    g_lab = rng.choice(5, size=70, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    q_lab = rng.choice(6, size=40)  # class 5 is never in the gallery
    g = rng.normal(size=(70, 4)) + 0.8 * g_lab[:, None]
    q = rng.normal(size=(40, 4)) + 0.8 * q_lab[:, None]
    ref = _ref_gallery(q, q_lab, g, g_lab)
    for chunk_size in (1, 9, 40, 4096):
        got = retrieval_metrics(
            q, q_lab, chunk_size=chunk_size, gallery_embeddings=g, gallery_labels=g_lab
        )
        assert got == pytest.approx(ref, abs=1e-12), chunk_size
    assert 0.0 < ref["map_at_r"] < ref["recall_at_1"] < ref["recall_at_8"] < 1.0
    # Through evaluate_embeddings, with kNN on a train set as before.
    both = evaluate_embeddings(q, q_lab, g, g_lab, knn_k=3, gallery_emb=g, gallery_labels=g_lab)
    assert {k: both[k] for k in KEYS} == pytest.approx(ref, abs=1e-12)
    assert "knn_accuracy" in both


def test_gallery_errors_and_lone_queries():
    q = np.zeros((2, 3))
    with pytest.raises(ValueError, match="given together"):
        retrieval_metrics(q, [0, 1], gallery_embeddings=q)
    with pytest.raises(DataError, match="gallery embeddings have 2"):
        retrieval_metrics(q, [0, 1], gallery_embeddings=np.zeros((4, 2)), gallery_labels=[0] * 4)
    # No query has its class in the gallery: every metric is missing.
    got = retrieval_metrics(q, [0, 1], gallery_embeddings=q, gallery_labels=[5, 6])
    assert _missing(got)


def test_shares_classes():
    assert shares_classes([0, 1, 2], [2, 3])
    assert not shares_classes([0, 1], [2, 3])
