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
    with pytest.raises(
        DataError, match="fewer than 2 training images: a triplet needs two images of its class"
    ):
        pk_batches(labels, 2, 2, seed=0, epoch=0)


def test_random_batch_larger_than_split_is_refused():
    with pytest.raises(DataError, match="; lower trainer.batch_size$"):
        random_batches(np.arange(5), 8, seed=0, epoch=0)  # the message says what to do


def test_pk_tops_up_a_class_smaller_than_k_with_its_own_images():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])  # classes of 2 and 3 images, K = 4
    batches = pk_batches(labels, 2, 4, seed=0, epoch=0)
    for batch in batches:
        chunk_labels = labels[batch].reshape(2, 4)
        assert all(len(set(row)) == 1 for row in chunk_labels)  # each chunk one class
    assert set(batches.reshape(-1)) == set(range(10))


def test_a_batch_never_holds_an_image_twice_when_its_class_has_k_images():
    """Classes of >= K images whose sizes are not multiples of K: the top-up of each last
    chunk takes images not already in that chunk."""
    labels = _labels(per_class=(11, 9, 7, 6, 5, 13))
    for seed in range(20):
        for batch in pk_batches(labels, 3, 4, seed=seed, epoch=0):
            assert len(np.unique(batch)) == batch.size, (seed, sorted(batch))


def test_a_class_of_fewer_than_k_images_fills_its_chunks_with_its_own():
    """n < K <= 2n: every image of the class once or twice in its chunk; K > 2n: drawn
    with replacement, still only the class's own images."""
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # 2, 3 and 9 images
    for k in (4, 8):
        for seed in range(5):
            for batch in pk_batches(labels, 2, k, seed=seed, epoch=0):
                for chunk in batch.reshape(2, k):
                    (c,) = np.unique(labels[chunk])  # one class per chunk
                    counts = np.bincount(chunk, minlength=len(labels))[labels == c]
                    if len(counts) >= k:
                        continue
                    assert counts.min() >= 1, (k, seed, c, counts)
                    if k <= 2 * len(counts):
                        assert counts.max() <= 2, (k, seed, c, counts)


def _reuse_events(labels, batches, p):
    """For each batch that reuses a class (an image of it seen before): (the classes that
    still had unseen images before that batch, the batch's classes)."""
    seen = np.zeros(len(labels), bool)
    events = []
    for batch in batches:
        unseen = {c for c in np.unique(labels) if not seen[labels == c].all()}
        if seen[batch].any():
            events.append((unseen, set(labels[batch].tolist())))
        seen[batch] = True
    return events


def test_a_class_is_reused_only_when_fewer_than_p_have_images_left():
    """Class sizes that are multiples of K (no top-up): a class is reshuffled only when
    fewer than P classes still have unseen images, and then those are all in the batch."""
    labels = _labels(per_class=(32, 24, 8, 8, 8, 4, 4))
    reuses = 0
    for seed in range(30):
        batches = pk_batches(labels, 3, 4, seed=seed, epoch=0)
        for unseen, in_batch in _reuse_events(labels, batches, 3):
            reuses += 1
            assert len(unseen) < 3, (seed, unseen)
            assert unseen <= in_batch, (seed, unseen, in_batch)
    assert reuses > 0  # the proportional draw does run some classes out early


def test_batches_depend_on_seed_and_epoch_only():
    labels = _labels()
    for draw in (
        lambda s, e: pk_batches(labels, 3, 4, s, e),
        lambda s, e: random_batches(labels, 16, s, e),
    ):
        np.testing.assert_array_equal(draw(1, 2), draw(1, 2))
        assert not np.array_equal(draw(1, 2), draw(1, 3))
        assert not np.array_equal(draw(1, 2), draw(2, 2))
        assert draw(1, 2).dtype == np.int32


def test_a_split_of_exactly_one_batch_gives_one_batch():
    batches = random_batches(np.arange(8), 8, seed=0, epoch=0)
    assert sorted(batches.ravel()) == list(range(8)) and batches.shape == (1, 8)


CONFIGURED = """
from types import SimpleNamespace
import numpy as np
from tripletlab.data.samplers import (
    effective_batch_size, epoch_batches, pk_batches, random_batches,
)
labels = np.repeat(np.arange(5), 7)
pk = SimpleNamespace(name="pk", classes_per_batch=3, images_per_class=2)
got = epoch_batches(labels, pk, batch_size=99, seed=4, epoch=1)
assert np.array_equal(got, pk_batches(labels, 3, 2, seed=4, epoch=1))
assert effective_batch_size(pk, 99) == 6
plain = SimpleNamespace(name="random")
got = epoch_batches(labels, plain, batch_size=10, seed=4, epoch=1)
assert np.array_equal(got, random_batches(labels, 10, seed=4, epoch=1))
assert effective_batch_size(plain, 10) == 10
"""


def test_the_configured_sampler_gives_the_batches_and_their_size():
    """epoch_batches / effective_batch_size follow sampler.name, in a fresh interpreter
    that imports the samplers first (as any caller may)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CONFIGURED], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
