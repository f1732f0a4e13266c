"""Samplers: which images make each training batch, as indices drawn with numpy.

Each epoch a sampler draws the batches' indices from ``(seed, epoch)`` alone, so a fixed
seed gives the same batches, also after a resume. ``random`` shuffles the split; ``pk``
(``sampler.classes_per_batch`` P x ``sampler.images_per_class`` K) gives every batch P
classes of K images, so that each anchor has positives to mine.

Samplers are registered by name in :data:`tripletlab.registry.SAMPLERS` (``sampler.name``);
a new one is a :class:`Sampler` registered there plus ``conf/sampler/<name>.yaml``.
No TensorFlow here: the tf.data pipeline (:mod:`tripletlab.data.pipeline`) gathers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tripletlab.errors import ConfigError, DataError
from tripletlab.registry import SAMPLERS


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
            if len(pool) == 0:  # a class of fewer than K images: it repeats its own
                pool = members
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
