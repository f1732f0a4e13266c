"""Samplers: which images make each batch (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from tripletlab.data.samplers import pk_batches, random_batches
from tripletlab.errors import ConfigError, DataError


def _labels(per_class=(30, 25, 20, 12, 9), seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


def test_random_batches_cover_each_image_at_most_once():
    labels = _labels()
    batches = random_batches(labels, 16, seed=1, epoch=0)
    assert batches.shape == (len(labels) // 16, 16)
    assert len(np.unique(batches)) == batches.size


@pytest.mark.parametrize(("p", "k"), [(2, 2), (3, 4), (5, 3)])
def test_pk_batches_have_exactly_p_classes_of_k_images(p, k):
    labels = _labels()
    batches = pk_batches(labels, p, k, seed=3, epoch=2)
    assert batches.shape[1] == p * k
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == p
        assert np.all(counts == k)


def test_pk_batches_see_every_image_about_once_per_epoch():
    labels = _labels(per_class=(40, 40, 40, 40))
    batches = pk_batches(labels, 2, 4, seed=0, epoch=0)
    seen = np.bincount(batches.ravel(), minlength=len(labels))
    assert batches.size == len(labels)
    assert np.all(seen == 1)
    labels = _labels()
    seen = np.bincount(pk_batches(labels, 3, 4, seed=0, epoch=0).ravel(), minlength=len(labels))
    assert (seen >= 1).mean() > 0.8  # imbalanced classes: small ones are reused
    assert seen.max() <= 3


def test_pk_with_too_few_classes_says_what_to_do():
    with pytest.raises(ConfigError, match="classes_per_batch"):
        pk_batches(_labels(), 8, 2, seed=0, epoch=0)


def test_pk_with_a_single_image_class_is_refused():
    labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(DataError, match="fewer than 2"):
        pk_batches(labels, 2, 2, seed=0, epoch=0)


def test_random_batch_larger_than_split_is_refused():
    with pytest.raises(DataError, match="batch_size"):
        random_batches(np.arange(5), 8, seed=0, epoch=0)


def test_pk_tops_up_a_class_smaller_than_k_with_its_own_images():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])  # classes of 2 and 3 images, K = 4
    batches = pk_batches(labels, 2, 4, seed=0, epoch=0)
    for batch in batches:
        chunk_labels = labels[batch].reshape(2, 4)
        assert all(len(set(row)) == 1 for row in chunk_labels)  # each chunk one class
    assert set(batches.reshape(-1)) == set(range(10))
