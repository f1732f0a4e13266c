"""Retrieval and k-NN metrics for embeddings, in plain TensorFlow.

Distances are Euclidean. Neighbours are ranked by the score ``2 q.g - |g|^2``, which is
``|q|^2 - |q - g|^2``: the same order as the squared distance, without the per-query constant
and without a square root. Work is done in chunks of ``chunk_size`` queries, so memory is
``O(chunk_size * N)`` and never ``N x N``; within a chunk everything is vectorised.

Ties are broken deterministically: ``tf.math.top_k`` puts the lower gallery index first
among equal scores. Distances that are equal on paper may differ in the last bit after
rounding, which decides such ties instead; either way the result is reproducible.

Queries whose label has no other item in the set, or none in the gallery when a separate
gallery is given ("lone" queries, R = 0), are left out of
every retrieval metric, as pytorch-metric-learning's ``AccuracyCalculator`` does: they have no
correct answer to find. If every query is lone, each retrieval metric is missing: NaN, with
a warning (pytorch-metric-learning reports 0.0, which reads as a model that found nothing).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tripletlab.config import RECALL_KS
from tripletlab.errors import ConfigError, DataError

log = logging.getLogger("tripletlab")

__all__ = ["evaluate_embeddings", "knn_accuracy", "retrieval_metrics", "shares_classes"]

_HALF_DTYPES = (tf.float16, tf.bfloat16)


def _as_embeddings(x: Any, name: str) -> tf.Tensor:
    """Validate and convert embeddings to a float tensor [N, D] (half precision -> float32)."""
    try:
        t = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} cannot be converted to a tensor: {e}") from e
    if t.shape.rank != 2:
        raise DataError(f"{name} must have shape [N, D], got shape {t.shape.as_list()}")
    if t.dtype in _HALF_DTYPES or t.dtype.is_integer:
        # Half precision loses ranking accuracy in the matmul; integers cannot go into it.
        t = tf.cast(t, tf.float32)
    elif not t.dtype.is_floating:
        raise DataError(f"{name} must be a float array, got dtype {t.dtype.name}")
    if t.shape[0] == 0:
        raise DataError(f"{name} is empty (0 items)")
    if t.shape[1] == 0:
        raise DataError(f"{name} has 0 dimensions per item")
    if not bool(tf.reduce_all(tf.math.is_finite(t))):
        raise DataError(f"{name} contains NaN or inf")
    return t


def _as_labels(y: Any, n: int, name: str) -> tf.Tensor:
    """Validate and convert labels to an int64 tensor [N]."""
    try:
        t = tf.convert_to_tensor(y)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} cannot be converted to a tensor: {e}") from e
    if t.shape.rank != 1:
        raise DataError(f"{name} must have shape [N], got shape {t.shape.as_list()}")
    if not t.dtype.is_integer:
        raise DataError(f"{name} must be integers, got dtype {t.dtype.name}")
    if t.shape[0] != n:
        raise DataError(f"{name} has {t.shape[0]} entries but the embeddings have {n} rows")
    return tf.cast(t, tf.int64)


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size}")
    return int(chunk_size)


def _query_index(queries: Any | None, n: int) -> tf.Tensor:
    """int64 [Q]: the rows used as queries, checked to be distinct indices below ``n``."""
    if queries is None:
        return tf.range(n, dtype=tf.int64)
    index = np.asarray(queries)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or index.size == 0:
        raise DataError(
            "queries must be a non-empty 1-D list of integer item indices, got an array of "
            f"shape {index.shape} and dtype {index.dtype}"
        )
    if index.min() < 0 or index.max() >= n or np.unique(index).size != index.size:
        raise DataError(f"queries must be distinct item indices in [0, {n})")
    return tf.constant(index, tf.int64)


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = list(ks)
    if not ks:
        raise ConfigError("ks must name at least one k for recall@k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"every k in ks must be a positive integer, got {k!r}")
    return sorted({int(k) for k in ks})


def _scores(queries: tf.Tensor, gallery: tf.Tensor, gallery_sq_norms: tf.Tensor) -> tf.Tensor:
    """Similarity [B, M] = 2 q.g - |g|^2 for queries [B, D] and gallery [M, D]; higher = nearer."""
    return 2.0 * tf.matmul(queries, gallery, transpose_b=True) - gallery_sq_norms[None, :]


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
    gallery_embeddings: Any | None = None,
    gallery_labels: Any | None = None,
    queries: Any | None = None,
) -> dict[str, float]:
    """Retrieval metrics of labelled queries: leave-one-out, or against a separate gallery.

    Without a gallery every item is a query against all the others (the set is both
    queries and gallery; the query itself is left out). With one (In-Shop's protocol) each
    query is ranked against the gallery items only, and nothing is left out. ``queries``
    keeps only some items as queries, still ranked against the whole gallery: an unbiased
    estimate of every metric at a fraction of the cost.

    Args:
        embeddings: [N, D] float (numpy or tf; float16/bfloat16 are cast to float32).
        labels: [N] integer class ids (any integers, not necessarily contiguous).
        ks: the k of each ``recall_at_k``; values above the gallery's size see all of it.
        chunk_size: number of queries scored at once (memory ~ chunk_size * gallery size).
        gallery_embeddings: optional [M, D] float; gallery_labels: [M] integers (give both
            or neither).
        queries: optional [Q] indices into ``embeddings``: the items used as queries (the
            gallery is unchanged); None: every item.

    Returns:
        ``precision_at_1``: share of queries whose nearest neighbour has their label (always
        equal to ``recall_at_1``; both are kept because both names are in common use).
        ``recall_at_{k}``: share of queries with at least one same-label item among their
        k nearest (the metric-learning Recall@K, not the information-retrieval recall).
        ``map_at_r``: MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check"): with
        R = number of gallery items (other items, without a gallery) sharing the query's
        label, ``AP@R = (1/R) * sum_{i<=R} P(i) * rel(i)``, averaged over queries.
        Queries with R = 0 are excluded from all of them (see the module docstring).
    """
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("gallery_embeddings and gallery_labels must be given together")
    ks = _check_ks(ks)
    chunk_size = _check_chunk_size(chunk_size)
    emb = _as_embeddings(embeddings, "embeddings")
    n = int(emb.shape[0])
    lab = _as_labels(labels, n, "labels")
    leave_one_out = gallery_embeddings is None
    if leave_one_out:
        gal, gal_lab = emb, lab
    else:
        gal = _as_embeddings(gallery_embeddings, "gallery embeddings")
        gal_lab = _as_labels(gallery_labels, int(gal.shape[0]), "gallery labels")
        if gal.shape[1] != emb.shape[1]:
            raise DataError(
                f"query embeddings have {emb.shape[1]} dimensions but gallery embeddings "
                f"have {gal.shape[1]}"
            )
        if gal.dtype != emb.dtype:
            emb, gal = tf.cast(emb, tf.float64), tf.cast(gal, tf.float64)
    m = int(gal.shape[0])
    query_index = _query_index(queries, n)  # [Q] rows of emb that are queries

    # R per query: how many gallery items (other items, leave-one-out) share its label.
    _, label_idx = tf.unique(tf.concat([lab, gal_lab], axis=0))
    q_idx, g_idx = label_idx[:n], label_idx[n:]
    class_counts = tf.math.bincount(
        tf.cast(g_idx, tf.int32), minlength=tf.reduce_max(label_idx) + 1, dtype=tf.int64
    )
    r_all = tf.gather(class_counts, q_idx) - (1 if leave_one_out else 0)  # [N]
    r_all = tf.gather(r_all, query_index)  # [Q]
    q_emb, q_lab = tf.gather(emb, query_index), tf.gather(lab, query_index)
    num_valid = int(tf.reduce_sum(tf.cast(r_all > 0, tf.int64)))

    names = ["precision_at_1", *[f"recall_at_{k}" for k in ks], "map_at_r"]
    if num_valid == 0:
        log.warning(
            "no query has another item of its class%s: the retrieval metrics are missing "
            "(NaN); evaluate more images per class (e.g. a larger dataset.max_test)",
            "" if leave_one_out else " in the gallery",
        )
        return dict.fromkeys(names, math.nan)

    # One top-k depth for every chunk: deep enough for the largest k and for the largest R
    # (MAP@R looks at the first R neighbours), and never more than the candidates there are.
    max_r = int(tf.reduce_max(r_all))
    depth = min(max(ks[-1], max_r), m - 1 if leave_one_out else m)
    ranks = tf.range(1, depth + 1, dtype=tf.float64)  # [depth], 1-based rank i

    sq_norms = tf.reduce_sum(tf.square(gal), axis=1)  # [M]
    # k = 1 is always scored: precision@1 is recall@1, wanted even when ks lacks 1.
    hits_at = {k: tf.constant(0.0, tf.float64) for k in sorted({1, *ks})}
    ap_sum = tf.constant(0.0, tf.float64)
    neg_inf = tf.constant(-np.inf, gal.dtype)
    for start in range(0, int(query_index.shape[0]), chunk_size):
        end = start + chunk_size
        scores = _scores(q_emb[start:end], gal, sq_norms)  # [B, M]
        if leave_one_out:
            # Leave each query out of its own gallery: its own column becomes -inf.
            own = query_index[start:end, None] == tf.range(m, dtype=tf.int64)
            scores = tf.where(own, neg_inf, scores)
        _, nn_idx = tf.math.top_k(scores, k=depth, sorted=True)  # [B, depth]

        q_r = r_all[start:end]  # [B]
        valid = tf.cast(q_r > 0, tf.float64)  # [B]; lone queries count for nothing
        rel = tf.cast(tf.gather(gal_lab, nn_idx) == q_lab[start:end, None], tf.float64)

        for k in hits_at:
            found = tf.reduce_max(rel[:, : min(k, depth)], axis=1)  # [B]
            hits_at[k] += tf.reduce_sum(found * valid)

        # AP@R: only ranks i <= R count; P(i) = (relevant among the first i) / i.
        q_r_f = tf.cast(q_r, tf.float64)
        rel_r = rel * tf.cast(ranks[None, :] <= q_r_f[:, None], tf.float64)  # [B, depth]
        precision_i = tf.cumsum(rel_r, axis=1) / ranks[None, :]
        ap = tf.reduce_sum(precision_i * rel_r, axis=1) / tf.maximum(q_r_f, 1.0)  # [B]
        ap_sum += tf.reduce_sum(ap * valid)

    out = {"precision_at_1": float(hits_at[1] / num_valid)}
    for k in ks:
        out[f"recall_at_{k}"] = float(hits_at[k] / num_valid)
    out["map_at_r"] = float(ap_sum / num_valid)
    return out


def shares_classes(train_labels: Any, test_labels: Any) -> bool:
    """Whether any test label is a train label: k-NN classification means nothing without
    (the unseen-class protocol), so it is then not computed."""
    return bool(np.isin(np.asarray(test_labels), np.asarray(train_labels)).any())


def knn_accuracy(
    train_embeddings: Any,
    train_labels: Any,
    test_embeddings: Any,
    test_labels: Any,
    k: int = 10,
    chunk_size: int = 1024,
) -> float:
    """Accuracy of a k-nearest-neighbour classifier fitted on the train embeddings.

    Each test item [D] gets the majority label of its k nearest train items (Euclidean).
    A tie between classes goes to the tied class whose nearest member ranks first, i.e.
    the nearest neighbour's label among the tied classes. ``k`` above the train size uses
    the whole train set. Test labels absent from the train set are always wrong.

    Args:
        train_embeddings: [M, D] float; train_labels: [M] integers.
        test_embeddings: [T, D] float; test_labels: [T] integers.
        k: number of neighbours that vote.
        chunk_size: number of test items scored at once (memory ~ chunk_size * M).

    Returns:
        The share of test items classified correctly, as a python float.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k for k-NN accuracy must be a positive integer, got {k!r}")
    chunk_size = _check_chunk_size(chunk_size)
    train = _as_embeddings(train_embeddings, "train embeddings")
    test = _as_embeddings(test_embeddings, "test embeddings")
    if train.shape[1] != test.shape[1]:
        raise DataError(
            f"train embeddings have {train.shape[1]} dimensions but test embeddings have "
            f"{test.shape[1]}"
        )
    # One dtype for the matmul: the wider of the two.
    if train.dtype != test.dtype:
        train, test = tf.cast(train, tf.float64), tf.cast(test, tf.float64)
    m, t = int(train.shape[0]), int(test.shape[0])
    train_lab = _as_labels(train_labels, m, "train labels")
    test_lab = _as_labels(test_labels, t, "test labels")

    k = min(int(k), m)
    # Rank of each of the k neighbours, used to prefer the nearest among tied classes.
    rank = tf.range(k, dtype=tf.int64)
    sq_norms = tf.reduce_sum(tf.square(train), axis=1)
    correct = tf.constant(0, tf.int64)
    for start in range(0, t, chunk_size):
        end = min(start + chunk_size, t)
        _, nn_idx = tf.math.top_k(_scores(test[start:end], train, sq_norms), k=k)  # [B, k]
        nn_lab = tf.gather(train_lab, nn_idx)  # [B, k]
        # Votes for the class of neighbour j = neighbours sharing its label. Comparing the k
        # labels pairwise ([B, k, k]) avoids a [B, k, num_classes] one-hot.
        votes = tf.reduce_sum(
            tf.cast(nn_lab[:, :, None] == nn_lab[:, None, :], tf.int64), axis=2
        )  # [B, k]
        # votes * (k + 1) - rank is unique per row: most votes wins, and among equal votes
        # the smallest rank, which is the nearest member of the first tied class.
        winner = tf.argmax(votes * (k + 1) - rank[None, :], axis=1)  # [B]
        pred = tf.gather(nn_lab, winner, batch_dims=1)  # [B]
        correct += tf.reduce_sum(tf.cast(pred == test_lab[start:end], tf.int64))
    return float(int(correct) / t)


def evaluate_embeddings(
    test_emb: Any,
    test_labels: Any,
    train_emb: Any | None = None,
    train_labels: Any | None = None,
    knn_k: int = 10,
    chunk_size: int = 1024,
    gallery_emb: Any | None = None,
    gallery_labels: Any | None = None,
    queries: Any | None = None,
) -> dict[str, float]:
    """Retrieval metrics on the test set, plus ``knn_accuracy`` when a train set is given.

    Args:
        test_emb: [T, D] float; test_labels: [T] integers.
        train_emb: optional [M, D] float; train_labels: [M] integers (give both or neither).
        knn_k: k of the k-NN classifier.
        chunk_size: queries scored at once.
        gallery_emb: optional [G, D] float; gallery_labels: [G] integers: the test items
            are then queries ranked against this gallery (In-Shop), not against each other.
        queries: optional [Q] indices of the test items used as retrieval queries (see
            :func:`retrieval_metrics`); k-NN accuracy always classifies every test item.

    Returns:
        The keys of :func:`retrieval_metrics` (default ks), then ``knn_accuracy`` if a train
        set was given.
    """
    if (train_emb is None) != (train_labels is None):
        # A bug in the calling code rather than bad user input, hence not a TripletLabError.
        raise ValueError("train_emb and train_labels must be given together")
    out = retrieval_metrics(
        test_emb,
        test_labels,
        chunk_size=chunk_size,
        gallery_embeddings=gallery_emb,
        gallery_labels=gallery_labels,
        queries=queries,
    )
    if train_emb is not None:
        out["knn_accuracy"] = knn_accuracy(
            train_emb, train_labels, test_emb, test_labels, k=knn_k, chunk_size=chunk_size
        )
    return out
