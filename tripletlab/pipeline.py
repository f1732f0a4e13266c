"""tf.data input pipelines: batches of indices made per epoch, then one vectorised gather.

The images stay in memory as one uint8 tensor (the "cache"); each epoch the sampler draws
the batches' indices with numpy from ``(seed, epoch)``, so a fixed seed gives the same
batches, also after a resume, and no Python runs per step. Each batch is gathered, scaled
to [0, 1] and augmented on whole batches (no per-image map), then prefetched.

Samplers are registered by name in :data:`tripletlab.registry.SAMPLERS` (``sampler.name``);
a new one is a :class:`Sampler` registered there plus ``conf/sampler/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tripletlab.errors import ConfigError, DataError
from tripletlab.registry import SAMPLERS

# Largest translation, in pixels, of the "translate" augmentation (about 10% of 28 px).
MAX_SHIFT_FRACTION = 0.1


def random_batches(labels: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled indices cut into full batches, as in the seed: int32 [steps, batch_size]."""
    n = len(labels)
    if n < batch_size:
        raise DataError(
            f"the training split has {n} images, fewer than trainer.batch_size={batch_size}; "
            "lower trainer.batch_size"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def pk_batches(labels: np.ndarray, p: int, k: int, seed: int, epoch: int) -> np.ndarray:
    """P classes x K images per batch, every image about once per epoch: int32 [steps, P*K].

    Each class's images are shuffled and cut into chunks of K (the last chunk is topped up
    with other images of the class). Each batch takes one chunk from each of P distinct
    classes, drawn with probability proportional to the chunks a class has left, so classes
    run out together and every chunk is used once. A class that runs out while others still
    have chunks is reshuffled and reused (its images are then seen twice).
    """
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < p:
        raise ConfigError(
            f"sampler.classes_per_batch={p} but the training split has only {len(classes)} "
            f"classes; use sampler.classes_per_batch<={len(classes)}"
        )
    small = classes[counts < 2]
    if len(small):
        raise DataError(
            f"class(es) {small.tolist()} have fewer than 2 training images: a triplet needs "
            "two images of its class"
        )
    rng = np.random.default_rng([seed, epoch])
    by_class = [np.flatnonzero(labels == c) for c in classes]

    def chunks_of(members: np.ndarray) -> list[np.ndarray]:
        shuffled = rng.permutation(members)
        pad = (-len(shuffled)) % k
        if pad:
            # Top up the last chunk with other images of the same class, without repeating
            # an image inside the chunk when the class is large enough.
            tail = shuffled[-(len(shuffled) % k) :]
            pool = np.setdiff1d(members, tail)
            extra = rng.choice(pool, size=pad, replace=len(pool) < pad)
            shuffled = np.concatenate([shuffled, extra])
        return list(shuffled.reshape(-1, k))

    queues = [chunks_of(m) for m in by_class]
    steps = sum(len(q) for q in queues) // p
    batches = np.empty((steps, p * k), dtype=np.int32)
    for step in range(steps):
        left = np.array([len(q) for q in queues], dtype=np.float64)
        if np.count_nonzero(left) < p:
            for c in np.flatnonzero(left == 0)[: p - np.count_nonzero(left)]:
                queues[c] = chunks_of(by_class[c])
            left = np.array([len(q) for q in queues], dtype=np.float64)
        chosen = rng.choice(len(queues), size=p, replace=False, p=left / left.sum())
        batches[step] = np.concatenate([queues[c].pop() for c in chosen])
    return batches


@dataclass(frozen=True)
class Sampler:
    """One sampler, registered by name in SAMPLERS.

    ``batches(labels, cfg, batch_size, seed, epoch)`` -> int32 [steps, B]: one epoch's
    batches of indices into ``labels``, the same for the same (seed, epoch); ``cfg`` is the
    sampler node and ``batch_size`` is ``trainer.batch_size``. ``batch_size(cfg,
    batch_size)`` -> B.
    """

    batches: Callable[[np.ndarray, Any, int, int, int], np.ndarray]
    batch_size: Callable[[Any, int], int]


def _random(labels: np.ndarray, cfg, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    return random_batches(labels, batch_size, seed, epoch)


def _pk(labels: np.ndarray, cfg, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    return pk_batches(labels, cfg.classes_per_batch, cfg.images_per_class, seed, epoch)


SAMPLERS.register("random")(Sampler(_random, lambda cfg, batch_size: batch_size))
SAMPLERS.register("pk")(
    Sampler(_pk, lambda cfg, batch_size: cfg.classes_per_batch * cfg.images_per_class)
)


def epoch_batches(
    labels: np.ndarray, sampler, batch_size: int, seed: int, epoch: int
) -> np.ndarray:
    """The batches' indices for one epoch from the sampler that ``sampler.name`` names."""
    return SAMPLERS.get(str(sampler.name)).batches(labels, sampler, batch_size, seed, epoch)


def effective_batch_size(sampler, batch_size: int) -> int:
    """The batch size ``sampler`` gives (P * K for pk, ``batch_size`` for random)."""
    return SAMPLERS.get(str(sampler.name)).batch_size(sampler, batch_size)


def scale_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) * (1.0 / 255.0)


def augment_batch(images: tf.Tensor, mode: str, seed: tf.Tensor) -> tf.Tensor:
    """Random translation (and horizontal flip) of a whole batch, stateless from ``seed``.

    images: float32 [B, H, W, C]; seed: int [2]. Translation uses one projective-transform
    op for the batch (zero fill), so the cost is one pass over the pixels.
    """
    if mode == "none":
        return images
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    if mode == "flip_translate":
        flip = tf.random.stateless_uniform([b, 1, 1, 1], seed=seed) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    max_dy = tf.cast(h, tf.float32) * MAX_SHIFT_FRACTION
    max_dx = tf.cast(w, tf.float32) * MAX_SHIFT_FRACTION
    shifts = tf.random.stateless_uniform([b, 2], seed=seed + 1, minval=-1.0, maxval=1.0)
    dy = tf.round(shifts[:, 0] * max_dy)
    dx = tf.round(shifts[:, 1] * max_dx)
    ones, zeros = tf.ones_like(dx), tf.zeros_like(dx)
    # Output pixel (x, y) reads input (x + dx, y + dy): a shift by (-dx, -dy).
    transforms = tf.stack([ones, zeros, dx, zeros, ones, dy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.stack([h, w]),
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )


class TrainPipeline:
    """Builds one epoch's ``tf.data.Dataset`` of (images float32 [B,H,W,C], labels int32 [B])."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        sampler,
        batch_size: int,
        seed: int,
        augment: str = "none",
    ):
        self.labels = np.asarray(labels)
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = int(seed)
        self.augment = augment
        # The whole split lives in memory once, as uint8 (47 MB for Fashion-MNIST).
        self._images = tf.constant(images, dtype=tf.uint8)
        self._labels = tf.constant(self.labels, dtype=tf.int32)
        self.steps_per_epoch = len(self.batch_indices(0))

    def batch_indices(self, epoch: int) -> np.ndarray:
        return epoch_batches(self.labels, self.sampler, self.batch_size, self.seed, epoch)

    def epoch(self, epoch: int) -> tf.data.Dataset:
        indices = self.batch_indices(epoch)
        images, labels, augment, base = self._images, self._labels, self.augment, self.seed

        def gather(step, idx):
            x = scale_images(tf.gather(images, idx))
            seed = tf.stack([tf.cast(base, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + step])
            return augment_batch(x, augment, seed), tf.gather(labels, idx)

        ds = tf.data.Dataset.from_tensor_slices(indices).enumerate()
        ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Unshuffled float32 batches in [0, 1], for embedding a whole split."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return ds.map(scale_images, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
