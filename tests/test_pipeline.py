"""Samplers and the tf.data pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tripletlab.errors import ConfigError, DataError
from tripletlab.pipeline import TrainPipeline, augment_batch, pk_batches, random_batches


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


@pytest.mark.parametrize("sampler", ["random", "pk"])
def test_same_seed_same_batches_other_seed_other_batches(sampler):
    labels = _labels()
    cfg = OmegaConf.create({"name": sampler, "classes_per_batch": 3, "images_per_class": 4})
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 6, 6, 1), dtype=np.uint8)

    def first_epoch(seed):
        pipe = TrainPipeline(images, labels, cfg, 12, seed, augment="translate")
        return [(x.numpy(), y.numpy()) for x, y in pipe.epoch(1)]

    a, b, c = first_epoch(7), first_epoch(7), first_epoch(8)
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=False))


def test_pipeline_scales_to_unit_range_and_keeps_pairs():
    labels = np.repeat(np.arange(4), 5)
    # Each image is filled with its own label * 50, so pairs can be checked after gathering.
    images = np.broadcast_to((labels * 50).astype(np.uint8)[:, None, None, None], (20, 4, 4, 1))
    cfg = OmegaConf.create({"name": "pk", "classes_per_batch": 2, "images_per_class": 2})
    pipe = TrainPipeline(np.ascontiguousarray(images), labels, cfg, 4, seed=0)
    for x, y in pipe.epoch(0):
        x, y = x.numpy(), y.numpy()
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_allclose(x[:, 0, 0, 0], y * 50 / 255.0, rtol=1e-6)


def test_translate_moves_pixels_and_keeps_shape():
    import tensorflow as tf

    x = np.zeros((64, 10, 10, 1), np.float32)
    x[:, 5, 5, 0] = 1.0
    out = augment_batch(tf.constant(x), "flip_translate", tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == x.shape
    assert np.allclose(out.sum(axis=(1, 2, 3)), 1.0)  # a 1-px shift keeps the dot inside
    assert (out[:, 5, 5, 0] == 0).any()  # some images moved
