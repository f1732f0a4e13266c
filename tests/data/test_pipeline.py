"""The tf.data pipeline: batches gathered, augmented, scaled and prefetched."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tripletlab.data import pipeline
from tripletlab.data.image_files import ImageFiles
from tripletlab.data.pipeline import (
    TrainPipeline,
    as_uint8_tensor,
    augment_batch,
    eval_batch_size,
    eval_batches,
    prefetch_batches,
)
from tripletlab.errors import DataError


def _labels(per_class=(30, 25, 20, 12, 9), seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


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


# ------------------------------------------------- augmentation, checked pixel by pixel
AUG_B, AUG_H, AUG_W = 64, 20, 20
AUG_SEED = (5, 9)
MAX_SHIFT = 2  # README: shifts up to 10% of the image: round(0.1 * 20)


def _numbered_images():
    """Each pixel holds 1 + its own index (y * W + x), so an output pixel names its source;
    0 is what the zero fill writes. float32 [B, H, W, 1]."""
    one = np.arange(1, AUG_H * AUG_W + 1, dtype=np.float32).reshape(AUG_H, AUG_W)
    return np.broadcast_to(one[None, :, :, None], (AUG_B, AUG_H, AUG_W, 1)).copy()


def _augment(images, mode):
    import tensorflow as tf

    seed = tf.constant(AUG_SEED, tf.int64)
    return augment_batch(tf.constant(images), mode, seed).numpy()


def _expected(dy, dx, flip):
    """By hand: output (y, x) shows input (y + dy, x + dx) of the (flipped) image, else 0."""
    src = _numbered_images()[0, :, :, 0]
    if flip:
        src = src[:, ::-1]
    out = np.zeros_like(src)
    for y in range(AUG_H):
        for x in range(AUG_W):
            sy, sx = y + dy, x + dx
            if 0 <= sy < AUG_H and 0 <= sx < AUG_W:
                out[y, x] = src[sy, sx]
    return out


def _shift_of(image, flip):
    """(dy, dx) read off one output pixel that is not fill."""
    ys, xs = np.nonzero(image)
    y, x = ys[0], xs[0]
    sy, sx = divmod(int(image[y, x]) - 1, AUG_W)
    if flip:
        sx = AUG_W - 1 - sx
    return sy - y, sx - x


def test_translate_shifts_whole_images_with_zero_fill():
    out = _augment(_numbered_images(), "translate")
    assert out.shape == (AUG_B, AUG_H, AUG_W, 1)
    shifts = []
    for i in range(AUG_B):
        image = out[i, :, :, 0]
        dy, dx = _shift_of(image, flip=False)
        np.testing.assert_array_equal(image, _expected(dy, dx, flip=False), err_msg=f"image {i}")
        shifts.append((dy, dx))
    shifts = np.array(shifts)
    assert np.abs(shifts).max() == MAX_SHIFT  # up to 10%, and the full range is used
    assert (shifts < 0).any() and (shifts > 0).any()  # both directions
    assert (shifts != 0).any(axis=1).mean() > 0.5  # most images move
    assert len({tuple(s) for s in shifts}) > 5  # each image its own shift


def test_translate_moves_a_bright_pixel_by_the_images_shift():
    """The shifts come from the seed alone (stateless): a single bright pixel lands where
    the numbered images say its image moved, and everything else stays 0."""
    numbered = _augment(_numbered_images(), "translate")
    dots = np.zeros((AUG_B, AUG_H, AUG_W, 1), np.float32)
    dots[:, 10, 10, 0] = 1.0
    out = _augment(dots, "translate")
    for i in range(AUG_B):
        dy, dx = _shift_of(numbered[i, :, :, 0], flip=False)
        want = np.zeros((AUG_H, AUG_W), np.float32)
        want[10 - dy, 10 - dx] = 1.0
        np.testing.assert_array_equal(out[i, :, :, 0], want, err_msg=f"image {i}")


def test_no_augmentation_is_the_identity():
    images = _numbered_images()
    np.testing.assert_array_equal(_augment(images, "none"), images)


def test_flip_translate_flips_about_half_and_translates_all():
    out = _augment(_numbered_images(), "flip_translate")
    flipped = 0
    for i in range(AUG_B):
        image = out[i, :, :, 0]
        matches = [
            flip
            for flip in (False, True)
            if np.array_equal(image, _expected(*_shift_of(image, flip), flip))
        ]
        assert len(matches) == 1, f"image {i} is neither a shift nor a flipped shift"
        flipped += matches[0]
    # Each image is flipped with probability 1/2: 32 +- 4 (sd) of 64.
    assert 16 <= flipped <= 48


# ------------------------------------------------- memory bounded by the settings


def test_prefetch_depth_is_a_byte_budget_not_a_count():
    mib = 1 << 20
    budget = pipeline.PREFETCH_BYTES
    assert prefetch_batches(budget // 4) == 4
    assert prefetch_batches(64 * 224 * 224 * 3 * 4) == max(1, budget // (64 * 224 * 224 * 12))
    assert prefetch_batches(budget + 1) == 1  # one batch larger than the budget: still one
    assert prefetch_batches(1 * mib // 64) == pipeline.MAX_PREFETCH_BATCHES  # tiny batches
    # An eval batch never holds more than MAX_EVAL_BATCH_BYTES of float32.
    for shape in [(28, 28, 1), (96, 96, 3), (224, 224, 3), (1024, 1024, 3)]:
        b = eval_batch_size(shape, 4096)
        assert b * np.prod(shape) * 4 <= pipeline.MAX_EVAL_BATCH_BYTES or b == 1


def _fake_files(n: int, size: int) -> ImageFiles:
    # Nothing is read until an epoch is iterated: paths alone make a streamed split.
    return ImageFiles([f"/nonexistent/{i}.jpg" for i in range(n)], size, size, 3)


@pytest.mark.parametrize("size", [32, 96, 224])
def test_training_prefetch_depends_on_the_batch_bytes_not_the_number_of_images(size):
    cfg = OmegaConf.create({"name": "random"})
    depths = set()
    for n in (200, 20_000):
        labels = np.arange(n) % 10
        pipe = TrainPipeline(_fake_files(n, size), labels, cfg, 64, seed=0, max_steps=2)
        depths.add(pipe.ready_batches)
    (depth,) = depths
    assert depth == prefetch_batches(64 * size * size * 3 * 4)
    assert depth * 64 * size * size * 3 * 4 <= max(pipeline.PREFETCH_BYTES, 64 * size**2 * 12)


def test_in_memory_split_is_shared_with_tensorflow_not_copied():
    from tripletlab.data import aligned_empty

    images = aligned_empty((6, 4, 4, 3))
    images[...] = np.arange(6, dtype=np.uint8)[:, None, None, None]
    tensor = as_uint8_tensor(images)
    images[2] = 200  # the tensor sees it: one buffer, not two
    assert int(tensor[2, 0, 0, 0]) == 200 and int(tensor[3, 0, 0, 0]) == 3
    # Not aligned, read-only, or not contiguous: one aligned copy, the same values.
    raw = np.zeros(6 * 48 + 1, np.uint8)[1:].reshape(6, 4, 4, 3)
    raw[...] = images
    readonly = images.copy()
    readonly.flags.writeable = False
    for odd in (raw, readonly, images[::2]):
        np.testing.assert_array_equal(as_uint8_tensor(odd).numpy(), odd)
    with pytest.raises(DataError, match="uint8"):
        as_uint8_tensor(images.astype(np.float32))


def test_in_memory_epoch_reads_the_shared_images_while_it_runs():
    """The epoch gathers from the array itself, not a copy of the split (tf.constant): a
    change to the array after the epoch started shows in its later batches. (tf.data's
    graph rewrites cost a serialised copy too, but gather from the original: the RSS test
    in test_memory_bounds.py catches those.)"""
    from tripletlab.data import aligned_empty

    labels = np.arange(400) % 4
    images = aligned_empty((400, 4, 4, 1))
    images[...] = 0
    cfg = OmegaConf.create({"name": "random"})
    pipe = TrainPipeline(images, labels, cfg, 4, seed=0)
    batches = iter(pipe.epoch(0))
    first, _ = next(batches)
    assert np.all(first.numpy() == 0.0)
    images[...] = 255
    *_, (last, _) = batches  # 99 batches later: far past the prefetched ones
    assert np.all(last.numpy() == 1.0)


def test_eval_batches_of_an_array_are_views_of_it():
    images = np.arange(10 * 8 * 8 * 3, dtype=np.uint32).astype(np.uint8).reshape(10, 8, 8, 3)
    batches = list(eval_batches(images, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(np.shares_memory(b, images) for b in batches)  # no copy of the split
    np.testing.assert_array_equal(np.concatenate(batches), images)
