"""The one preprocessing path of an image: decode -> channels -> antialiased bilinear resize
-> uint8.

Every path that turns an image into a model's input goes through :func:`conform`
(TensorFlow ops): the in-memory data (:func:`tripletlab.data.images.decode_image`,
:func:`~tripletlab.data.images.adapt_images`), the streamed data and evaluation
(:func:`tripletlab.data.image_files.decode_file`), ``tripletlab-embed`` and
``tripletlab-index`` (the same two), and the graph of the exported SavedModel
(:mod:`tripletlab.reuse.export`), so the same file gives the same uint8 pixels everywhere.

- decode: ``tf.io.decode_image`` with the file's own channels (1 grey, 2 grey + alpha,
  3 RGB, 4 RGBA; a palette image comes out RGB or RGBA), first frame of an animation;
- channels: an alpha channel is dropped (not composited); colour -> grey with PIL's
  fixed-point ITU-R 601-2 luma (``convert("L")``); grey -> RGB repeats it (after resizing,
  which then works on one channel);
- resize: TensorFlow's bilinear resize with antialiasing, rounded half to even and clipped
  to uint8; none at all when the image already has the size.

Nothing else in tripletlab resizes an image (tests/data/test_preprocess.py greps for it).
TensorFlow is imported by the functions, not by this module.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# PIL's convert("L"): L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16.
LUMA_WEIGHTS = (19595, 38470, 7471)
# conform_array converts this many bytes of output at a time (float32 inside the resize).
CHUNK_BYTES = 1 << 24


def resize(images, height: int, width: int):
    """TensorFlow: uint8 [(N,) h, w, c] -> uint8 [(N,) height, width, c], bilinear with
    antialiasing (a triangle filter as wide as the scale when shrinking), rounded; the
    images themselves when they already have that size."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    shape = tf.shape(images)
    rank = len(images.shape)

    def resized():
        out = tf.image.resize(images, [height, width], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(shape[rank - 3] == height, shape[rank - 2] == width)
    out = tf.cond(same, lambda: tf.identity(images), resized)
    return tf.ensure_shape(out, [*images.shape[:-3], height, width, images.shape[-1]])


def conform(images, height: int | None, width: int | None, channels: int):
    """TensorFlow: uint8 [(N,) h, w, c], c = 1..4 (grey, grey + alpha, RGB, RGBA) ->
    uint8 [(N,) height, width, channels] (``channels`` 1 or 3; ``height``/``width`` None:
    keep the size). The conversions of the module docstring, in its order."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    c = tf.shape(images)[-1]
    checked = tf.debugging.assert_less_equal(
        c, 4, message="images must have 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels"
    )
    with tf.control_dependencies([checked]):
        # An even count has an alpha channel last (LA, RGBA): drop it.
        images = tf.cond(c % 2 == 0, lambda: images[..., :-1], lambda: tf.identity(images))
    c = tf.shape(images)[-1]
    if channels == 1:

        def luma():
            x = tf.cast(images, tf.int32)
            r, g, b = LUMA_WEIGHTS
            grey = (x[..., 0] * r + x[..., 1] * g + x[..., 2] * b + 0x8000) // 65536
            return tf.cast(grey, tf.uint8)[..., None]

        images = tf.cond(c == 3, luma, lambda: images[..., :1])
    rank = len(images.shape)
    images = tf.ensure_shape(images, [None] * rank)
    if height is not None and width is not None:
        images = resize(images, int(height), int(width))
    if channels == 3:
        c = tf.shape(images)[-1]
        images = tf.cond(c == 1, lambda: tf.repeat(images, 3, axis=-1), lambda: images)
    return tf.ensure_shape(images, [*images.shape[:-1], channels])


def decode(contents, height: int | None, width: int | None, channels: int):
    """TensorFlow: a JPEG/PNG/GIF/BMP/WebP file's bytes (a string tensor) -> uint8
    [height, width, channels] by :func:`conform`."""
    return conform(decode_native(contents), height, width, channels)


ANIMATED_WEBP = (
    "an animated WebP, which TensorFlow cannot decode (its decoder corrupts memory and "
    "aborts the process); save its first frame as PNG or a still WebP"
)


def decode_native(contents):
    """TensorFlow: a file's bytes -> uint8 [h, w, c] with its own channels (c = 1..4).

    An animated WebP (RIFF, WEBP, a VP8X chunk whose flags have the animation bit) fails
    with InvalidArgumentError(ANIMATED_WEBP) before the decoder sees it: TensorFlow 2.21's
    aborts the whole process on one (tests/data/test_attack_preprocess.py).
    """
    import tensorflow as tf

    head = tf.strings.join([tf.strings.substr(contents, 0, 21), "\0" * 21])  # >= 21 bytes
    vp8x = tf.logical_and(
        tf.strings.substr(head, 0, 4) == "RIFF", tf.strings.substr(head, 8, 8) == "WEBPVP8X"
    )
    flags = tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0]
    animated = tf.logical_and(vp8x, tf.bitwise.bitwise_and(flags, 2) > 0)
    checked = tf.debugging.Assert(tf.logical_not(animated), [ANIMATED_WEBP])
    with tf.control_dependencies([checked]):
        image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, None])


def has_colour(image):
    """TensorFlow: uint8 [h, w, c] (c = 1..4) -> bool scalar: whether its colour channels
    differ somewhere. Grey, grey + alpha, and RGB(A) whose pixels are all grey (a grey
    palette, a grey JPEG saved as RGB) have none: ``dataset.channels=null`` makes them 1
    channel, in memory and streamed alike."""
    import tensorflow as tf

    def differs():
        return tf.logical_or(
            tf.reduce_any(image[..., 0] != image[..., 1]),
            tf.reduce_any(image[..., 1] != image[..., 2]),
        )

    return tf.cond(tf.shape(image)[-1] >= 3, differs, lambda: tf.constant(False))


@functools.lru_cache(maxsize=32)
def _compiled(rank: int, height: int | None, width: int | None, channels: int):
    """:func:`conform` as a tf.function for uint8 tensors of ``rank`` (3 or 4) of any size."""
    import tensorflow as tf

    return tf.function(
        lambda x: conform(x, height, width, channels),
        input_signature=[tf.TensorSpec([None] * rank, tf.uint8)],
    )


def conform_image(image: np.ndarray, size: Sequence[int] | None, channels: int) -> np.ndarray:
    """numpy: uint8 [h, w, c] (c = 1..4) -> [H, W, channels] by :func:`conform`; ``size``
    (H, W), or None to keep the image's own."""
    h, w = (None, None) if size is None else (int(size[0]), int(size[1]))
    return _compiled(3, h, w, int(channels))(np.asarray(image, np.uint8)).numpy()


def conform_array(
    images: np.ndarray, size: Sequence[int] | None, channels: int, out: np.ndarray | None = None
) -> np.ndarray:
    """numpy: uint8 [N, h, w, c] (c = 1..4) -> [N, H, W, channels] by :func:`conform`,
    converted CHUNK_BYTES of output at a time into ``out`` (allocated if None)."""
    x = np.asarray(images, np.uint8)
    h, w = (x.shape[1], x.shape[2]) if size is None else (int(size[0]), int(size[1]))
    if out is None:
        out = np.empty((len(x), h, w, int(channels)), np.uint8)
    step = max(1, CHUNK_BYTES // max(1, 4 * h * w * max(int(channels), x.shape[-1])))
    fn = _compiled(4, h, w, int(channels))
    for start in range(0, len(x), step):
        out[start : start + step] = fn(x[start : start + step]).numpy()
    return out
