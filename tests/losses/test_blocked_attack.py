"""Batch-all / semi-hard's blocked form (tripletlab/losses/blocked.py) on inputs beyond its
own tests: coincident embeddings, whose distance the dense form makes exactly 0."""

from __future__ import annotations

import numpy as np
import pytest

from tests.losses.test_blocked import MINED, _value_and_grad, force_form  # noqa: F401
from tripletlab.losses import reference


@pytest.mark.parametrize("strategy", MINED)
def test_blocked_form_gives_coincident_embeddings_distance_0(strategy, force_form):  # noqa: F811
    """Collapsed float32 batches (16 anchors in 4 classes on two unit points alternately, D =
    64; 8 draws: a norm from a reduce_sum and a dot from a matmul round differently, and sqrt
    lifts that to ~1e-4 at coincident points), blocks of 3 rows (the last of 1): loss,
    fraction and gradient as the brute force's on the same float32 values, to float32
    rounding."""
    labels = np.arange(16) // 4
    force_form("blocked", 3, 16)
    for seed in range(8):
        points = np.random.default_rng(seed).normal(size=(2, 64))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        emb = points[np.arange(16) % 2].astype(np.float32)
        want = reference.triplet_loss(labels, emb.astype(np.float64), strategy)
        want_grad = reference.triplet_loss_grad(labels, emb.astype(np.float64), strategy)
        got, grad = _value_and_grad(strategy, labels, emb)
        np.testing.assert_allclose(got, want, rtol=2e-6)
        np.testing.assert_allclose(grad, want_grad, atol=1e-5 * np.abs(want_grad).max())


@pytest.mark.parametrize("form", ["dense", "blocked"])
@pytest.mark.parametrize("strategy", MINED)
def test_a_memory_copy_of_a_batch_embedding_is_at_distance_0(strategy, form, force_form):  # noqa: F811
    """The memory holds exact copies of 4 batch embeddings under other labels (the collapsed
    batches above): each copy is a negative at distance 0, as the brute force says. Both forms;
    the dense one took a memory row's norm from a reduce_sum and the anchor's from the Gram
    diagonal, which put such a copy at ~3e-5 and made it semi-hard (loss 0.375 for 0.3125)."""
    labels = np.arange(16) // 4
    force_form(form, 3, 20)
    for seed in range(4):
        points = np.random.default_rng(seed).normal(size=(2, 64))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        emb = points[np.arange(16) % 2].astype(np.float32)
        memory = (np.arange(4), emb[:4].copy())
        want = reference.triplet_loss(
            labels,
            emb.astype(np.float64),
            strategy,
            memory=(memory[0], memory[1].astype(np.float64)),
        )
        got, _ = _value_and_grad(strategy, labels, emb, memory=memory)
        np.testing.assert_allclose(got, want, rtol=2e-6)
