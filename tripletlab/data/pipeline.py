"""tf.data input pipelines: batches of indices made per epoch, then one vectorised gather.

In memory (a uint8 array, Fashion-MNIST's 47 MB) the images live as one uint8 tensor; each
epoch the sampler draws the batches' indices with numpy from ``(seed, epoch)``, so a fixed
seed gives the same batches, also after a resume, and no Python runs per step. Each batch is
gathered, augmented as a whole batch of uint8 (no per-image map), scaled to [0, 1], then
prefetched.

Streamed (an :class:`~tripletlab.data.image_files.ImageFiles` index of files): the same batches
of indices; each image is read, decoded and resized by a parallel ``tf.data`` map, then
batched, augmented and scaled exactly as above. Memory holds the paths and a few prefetched
batches, whatever the number of images.

Memory is bounded by the settings, never by the number of images: the batches waiting in a
prefetch buffer or in flight in a parallel batch map are PREFETCH_BYTES' worth
(:func:`prefetch_batches`), not AUTOTUNE's choice; an evaluation batch holds at most
MAX_EVAL_BATCH_BYTES of float32 input (:func:`eval_batch_size`), and :func:`eval_batches`
yields uint8 batches of a split (slices of an array, or files decoded a batch at a time),
so evaluating a split never materialises it. The in-memory training split is shared with
TensorFlow without a copy (:func:`as_uint8_tensor`).

The batches' indices come from a sampler (:mod:`tripletlab.data.samplers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from tripletlab.data.image_files import (
    ImageFiles,
    decode_error,
    decode_file,
    inspect_image,
    path_tensor,
)
from tripletlab.data.images import aligned_empty
from tripletlab.data.samplers import effective_batch_size, epoch_batches
from tripletlab.errors import DataError

# Largest translation, in pixels, of the "translate" augmentation (about 10% of 28 px).
MAX_SHIFT_FRACTION = 0.1
# Largest evaluation batch, in bytes of float32 input: 1024 Fashion-MNIST images, but 111
# at 224x224x3, so that an eval batch of large images (and the model's activations) fits.
MAX_EVAL_BATCH_BYTES = 1 << 26
MAX_EVAL_BATCH_VALUES = MAX_EVAL_BATCH_BYTES // 4  # the same bound, in float32 values
# Batches a pipeline keeps ready (prefetched, or in flight in a parallel batch map), in
# bytes: AUTOTUNE grows these buffers by its own measure, up to a share of the machine's RAM.
PREFETCH_BYTES = 1 << 26
MAX_PREFETCH_BATCHES = 8  # small images need no deeper buffer than this
# TensorFlow's CPU kernels need tensor buffers aligned to this (Eigen's EIGEN_MAX_ALIGN_BYTES).
TENSOR_ALIGNMENT = 64


def prefetch_batches(batch_bytes: int) -> int:
    """How many batches of ``batch_bytes`` a pipeline keeps ready: PREFETCH_BYTES' worth,
    at least 1, at most MAX_PREFETCH_BATCHES (a number fixed by the settings, never by the
    data)."""
    return max(1, min(MAX_PREFETCH_BATCHES, PREFETCH_BYTES // max(int(batch_bytes), 1)))


def as_uint8_tensor(images: np.ndarray) -> tf.Tensor:
    """uint8 [N, H, W, C] as a tf.Tensor that shares the array's memory (DLPack, no copy).

    ``tf.constant`` would copy the array, and held two copies besides it here (3x the
    decoded size in all). TensorFlow needs the buffer aligned to TENSOR_ALIGNMENT, C-ordered
    and writable (DLPack has no read-only flag): an array that is not is copied once into
    one that is. The array must not change while the tensor is in use.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {array.dtype}")
    if not (
        array.flags.c_contiguous
        and array.flags.writeable
        and array.ctypes.data % TENSOR_ALIGNMENT == 0
    ):
        aligned = aligned_empty(array.shape, np.uint8)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def scale_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) * (1.0 / 255.0)


def augment_batch(images: tf.Tensor, mode: str, seed: tf.Tensor) -> tf.Tensor:
    """Random translation (and horizontal flip) of a whole batch, stateless from ``seed``.

    images: [B, H, W, C] of any dtype (the pipelines augment uint8, before scaling); seed:
    int [2]. Each image moves by a whole number of pixels, up to MAX_SHIFT_FRACTION of its
    side, with zero fill: a zero row and column padded on, then two gathers (rows, then
    columns, the flip folded into the column index), not an interpolating transform.
    """
    if mode == "none":
        return images
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    if mode == "flip_translate":
        flip = tf.random.stateless_uniform([b], seed=seed) < 0.5
    else:
        flip = tf.zeros([b], tf.bool)
    max_dy = tf.cast(h, tf.float32) * MAX_SHIFT_FRACTION
    max_dx = tf.cast(w, tf.float32) * MAX_SHIFT_FRACTION
    shifts = tf.random.stateless_uniform([b, 2], seed=seed + 1, minval=-1.0, maxval=1.0)
    dy = tf.cast(tf.round(shifts[:, 0] * max_dy), tf.int32)
    dx = tf.cast(tf.round(shifts[:, 1] * max_dx), tf.int32)
    # Output pixel (y, x) shows pixel (y + dy, x + dx) of the (flipped) input, else 0: a
    # source outside the image reads the zero row (index h) or column (w) padded on.
    rows = tf.range(h)[None, :] + dy[:, None]  # [B, H]
    cols = tf.range(w)[None, :] + dx[:, None]  # [B, W], in the flipped image
    rows = tf.where((rows >= 0) & (rows < h), rows, h)
    cols = tf.where((cols >= 0) & (cols < w), tf.where(flip[:, None], w - 1 - cols, cols), w)
    padded = tf.pad(images, [[0, 0], [0, 1], [0, 1], [0, 0]])
    x = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 1, C]
    return tf.gather(x, cols, axis=2, batch_dims=1)


class TrainPipeline:
    """Builds one epoch's ``tf.data.Dataset`` of (images float32 [B,H,W,C], labels int32 [B]).

    ``images``: uint8 [N, H, W, C] (kept in memory) or an ImageFiles (streamed from disk);
    ``max_steps`` (``trainer.steps_per_epoch``) keeps only an epoch's first batches.
    """

    def __init__(
        self,
        images: np.ndarray | ImageFiles,
        labels: np.ndarray,
        sampler,
        batch_size: int,
        seed: int,
        augment: str = "none",
        max_steps: int | None = None,
    ):
        self.labels = np.asarray(labels)
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = int(seed)
        self.augment = augment
        self.max_steps = None if max_steps is None else int(max_steps)
        self.streamed = isinstance(images, ImageFiles)
        if len(images) != len(self.labels):
            raise DataError(f"{len(images)} images but {len(self.labels)} labels")
        if self.streamed:
            self._files = images
            self._paths = path_tensor(images.paths)  # the names' bytes: any file name
        else:
            # The whole split lives in memory once, as uint8, shared with the numpy array.
            self._images = as_uint8_tensor(images)
        h, w, c = images.shape[1:]
        batch = effective_batch_size(sampler, batch_size)
        # float32 batches after scaling: what the prefetch buffer holds.
        self.ready_batches = prefetch_batches(batch * h * w * c * 4)
        self._labels = tf.constant(self.labels, dtype=tf.int32)
        self.steps_per_epoch = len(self.batch_indices(0))

    def batch_indices(self, epoch: int) -> np.ndarray:
        """int32 [steps, B]: the epoch's batches (the first ``max_steps`` of them)."""
        batches = epoch_batches(self.labels, self.sampler, self.batch_size, self.seed, epoch)
        return batches if self.max_steps is None else batches[: self.max_steps]

    def _seed(self, epoch: int, step):
        return tf.stack([tf.cast(self.seed, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + step])

    def epoch(self, epoch: int) -> tf.data.Dataset:
        indices = self.batch_indices(epoch)
        if self.streamed:
            return self._streamed_epoch(epoch, indices)
        images, labels, augment = self._images, self._labels, self.augment

        def gather(step, idx):
            x = augment_batch(tf.gather(images, idx), augment, self._seed(epoch, step))
            return scale_images(x), tf.gather(labels, idx)

        ds = tf.data.Dataset.from_tensor_slices(indices).enumerate()
        ds = ds.map(gather, num_parallel_calls=self.ready_batches, deterministic=True)
        # tf.data's default graph rewrites serialise the dataset, and with it a copy of the
        # captured images (the whole split again); this short pipeline gains nothing from them.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        return ds.prefetch(self.ready_batches).with_options(options)

    def find_unreadable(self, epoch: int) -> DataError | None:
        """After a decode error mid-epoch (TensorFlow's message names no file): the first of
        the epoch's files that cannot be decoded, as a DataError naming it; None if every
        file decodes (or the images are in memory). Slow (it decodes the files one by
        one), so only for the failure path."""
        if not self.streamed:
            return None
        for i in dict.fromkeys(self.batch_indices(epoch).reshape(-1).tolist()):
            path = str(self._files.paths[i])
            found = inspect_image(path)
            if isinstance(found, str):
                return DataError(f"image file {path} {found}; fix or remove it")
            why = decode_error(path)
            if why is not None:
                return DataError(f"image file {path} cannot be decoded ({why}); fix or remove it")
        return None

    def _streamed_epoch(self, epoch: int, indices: np.ndarray) -> tf.data.Dataset:
        paths, labels, augment = self._paths, self._labels, self.augment
        h, w, c = self._files.image_shape

        def load(i):
            return decode_file(tf.gather(paths, i), h, w, c), tf.gather(labels, i)

        def finish(step, batch):
            x, y = batch
            return scale_images(augment_batch(x, augment, self._seed(epoch, step))), y

        ds = tf.data.Dataset.from_tensor_slices(indices.reshape(-1))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(indices.shape[1], drop_remainder=True).enumerate()
        ds = ds.map(finish, num_parallel_calls=self.ready_batches, deterministic=True)
        return ds.prefetch(self.ready_batches)


def eval_batch_size(image_shape, batch_size: int) -> int:
    """``batch_size``, lowered so a batch holds at most MAX_EVAL_BATCH_BYTES of float32."""
    image_bytes = 4 * int(np.prod(image_shape))
    return max(1, min(int(batch_size), MAX_EVAL_BATCH_BYTES // max(image_bytes, 1)))


def eval_batches(images: np.ndarray | ImageFiles, batch_size: int) -> Iterator[Any]:
    """A whole split's uint8 batches [b, H, W, C] in order, b = :func:`eval_batch_size`.

    In memory: slices of the array (views, nothing copied). Streamed: files decoded in
    parallel, batched, with :func:`prefetch_batches` uint8 batches ready; only those, never
    the split, are decoded at once.
    """
    batch = eval_batch_size(images.shape[1:], batch_size)
    if isinstance(images, ImageFiles):
        ready = prefetch_batches(batch * int(np.prod(images.image_shape)))
        yield from images.dataset().batch(batch).prefetch(ready)
        return
    for start in range(0, len(images), batch):
        yield images[start : start + batch]


def eval_dataset(images: np.ndarray | ImageFiles, batch_size: int) -> Iterator[tf.Tensor]:
    """:func:`eval_batches` scaled to float32 in [0, 1], one batch at a time."""
    for batch in eval_batches(images, batch_size):
        yield scale_images(batch)
