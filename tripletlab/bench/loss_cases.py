"""The batches ``bench losses`` times: labels regimes (PK, random<N>), embeddings (random,
clustered), a batch with its cross-batch memory."""

from __future__ import annotations

import argparse
import re

import numpy as np
import tensorflow as tf

CLUSTER_NOISE = 0.9  # --embeddings clustered: noise scale around the class centres


def parse_labels(regime: str) -> int | None:
    """Labels regime -> number of classes: "pk" -> None, "random<N>" (N >= 1) -> N.

    ValueError for anything else."""
    if regime == "pk":
        return None
    match = re.fullmatch(r"random([1-9][0-9]*)", regime)
    if match is None:
        raise ValueError(f"labels {regime!r}: expected pk or random<N>, e.g. random10")
    return int(match.group(1))


def make_batch(
    batch_size: int,
    dim: int,
    images_per_class: int,
    seed: int = 0,
    labels: str = "pk",
    embeddings: str = "random",
):
    """Labels [B] int32 and L2-normalised float32 embeddings [B, D].

    labels "pk": B / images_per_class classes of images_per_class each, shuffled;
    "random<N>": each label uniform over N classes (see :func:`parse_labels`).
    embeddings "random": normal, no class structure (an untrained model); "clustered": a
    normal centre per class plus 0.9 x normal noise (a model part-way through training:
    positives nearer than most negatives, with overlap).
    """
    rng = np.random.default_rng(seed)
    n_classes = parse_labels(labels)
    if n_classes is None:
        labels = rng.permutation(np.arange(batch_size) // images_per_class).astype(np.int32)
    else:
        labels = rng.integers(0, n_classes, size=batch_size).astype(np.int32)
    emb = rng.normal(size=(batch_size, dim))
    if embeddings == "clustered":
        emb = rng.normal(size=(labels.max() + 1, dim))[labels] + CLUSTER_NOISE * emb
    elif embeddings != "random":
        raise ValueError(f"embeddings {embeddings!r}: expected random or clustered")
    emb = emb.astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return tf.constant(labels), tf.constant(emb)


def memory_batch(args: argparse.Namespace, regime: str, b: int, m: int):
    """A batch of b with a memory of m: one batch of b + m drawn as :func:`make_batch` does,
    split into (labels [b], embeddings [b, D]) and the memory (labels [m], embeddings
    [m, D]), so the memory's classes are the batch's (PK: whole classes of K, shuffled
    across both)."""
    labels, emb = make_batch(
        b + m, args.dim, args.images_per_class, labels=regime, embeddings=args.embeddings
    )
    return labels[:b], emb[:b], (labels[b:], emb[b:])
