"""Images as uint8 arrays: decoding a file, holding a split's files in memory or streamed,
and the conversions every dataset shares (resizing, grey <-> RGB).

Small datasets are uint8 numpy arrays [N, H, W, C]. Image files are streamed when holding
them in memory would take more than STREAM_ABOVE_BYTES at its peak (``dataset.stream=auto``,
:func:`in_memory_peak_bytes`) or when asked (``dataset.stream=true``): the split then holds
an :class:`~tripletlab.data.image_files.ImageFiles` index of paths in place of the array,
checked file by file before training starts (:func:`images_from_files`).

Decoding and every conversion (channels, resizing) are the one preprocessing path of
:mod:`tripletlab.data.preprocess` (TensorFlow's decoder and antialiased bilinear resize, PIL's
luma formula), the same as streamed files, the reuse commands and the exported SavedModel.
PIL only reads headers here (size, and the pixel limit before anything is decoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data import image_files
from tripletlab.data.image_files import ImageFiles, common_format, inspect_images
from tripletlab.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# dataset.stream=auto streams image files whose in-memory path would peak above this.
STREAM_ABOVE_BYTES = 1 << 30
# The in-memory path's peak above a streamed run's, per decoded byte: the decoded array,
# once (decoded straight into it, shared with TensorFlow, evaluated by slices); 0.97
# measured by `python -m tripletlab.bench data --memory` (results/bench_data_memory.md),
# where it was 3.3 when the array was stacked from a list and copied by tf.constant.
IN_MEMORY_PEAK_FACTOR = 1.0


def decode_image(path: Path, channels: int | None, size: int | Sequence[int] | None) -> np.ndarray:
    """Decode one image to uint8 [H, W, 1 or 3] by :func:`~tripletlab.data.preprocess.conform`;
    ``channels`` None keeps colour only if it has any (an RGB file whose three channels are
    equal counts as grey); ``size`` N (N x N), (H, W), or None (its own size).

    A file that is not a readable JPEG/PNG/GIF/BMP/WebP, or has more than
    ``image_files.MAX_PIXELS`` pixels, is one DataError naming it, before it is decoded.
    """
    from tripletlab.data import preprocess

    found = image_files.inspect_image(path)  # PIL reads the header only
    if isinstance(found, str):
        advice = "" if found.endswith((" it", "JPEG or PNG")) else "; fix or remove it"
        raise DataError(f"cannot read image {path}: it {found}{advice}")
    try:
        image = preprocess.decode_native(Path(path).read_bytes()).numpy()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    except image_files.tf_decode_errors() as exc:
        why = exc.message.split(" [Op:")[0].split("}}")[-1].strip() or type(exc).__name__
        raise DataError(
            f"cannot read image {path}: {why}; it is corrupt or not an image: fix or remove it"
        ) from None
    if channels is None:
        channels = 3 if bool(preprocess.has_colour(image)) else 1
    if size is not None and np.ndim(size) == 0:
        size = (int(size), int(size))
    return preprocess.conform_image(image, size, channels)


def aligned_empty(shape: Sequence[int], dtype: Any = np.uint8, align: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts at a multiple of ``align`` bytes:
    TensorFlow can then use it without a copy (:func:`tripletlab.data.pipeline.as_uint8_tensor`)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + align, np.uint8)
    start = (-buffer.ctypes.data) % align
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def _decode_all(paths: Sequence[Path], channels: int | None, size: int | None) -> np.ndarray:
    """Every image decoded straight into one uint8 array [N, H, W, C] (about its decoded
    size in memory, not a list of arrays and then their stack). ``channels`` None: 1 until
    an image has colour, then the array becomes RGB once."""
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        image = decode_image(path, channels, size)
        if out is None:
            out = aligned_empty((len(paths), *image.shape))
        elif image.shape[:2] != out.shape[1:3]:
            raise DataError(
                f"images differ in size: {paths[0]} is {out.shape[2]}x{out.shape[1]} but {path} "
                f"is {image.shape[1]}x{image.shape[0]}; set dataset.image_size=N to resize them "
                "all to N x N"
            )
        if image.shape[-1] > out.shape[-1]:  # the first colour image after grey ones
            rgb = aligned_empty((*out.shape[:3], 3))
            rgb[:i] = out[:i]  # broadcast over the channels
            out = rgb
        out[i] = image  # a grey image broadcasts into an RGB array
    if out is None:
        return np.zeros((0, size or 0, size or 0, channels or 1), np.uint8)
    return out


def in_memory_peak_bytes(count: int, size: int | None, channels: int | None) -> int:
    """What holding ``count`` images decoded in memory adds to a run's peak, in bytes:
    IN_MEMORY_PEAK_FACTOR times their decoded size; with ``channels`` None, RGB and 4/3 of
    that (grey images followed by a colour one: the grey array and its RGB copy at once);
    0 when ``size`` is None (their size is unknown before decoding)."""
    decoded = int(count) * int(size or 0) ** 2 * int(channels or 3)
    upgrade = 4 / 3 if channels is None else 1.0
    return int(decoded * IN_MEMORY_PEAK_FACTOR * upgrade)


def images_from_files(
    splits: Sequence[Sequence[Path]],
    channels: int | None,
    size: int | None,
    stream: str = "auto",
    verify: bool = True,
) -> list[np.ndarray | ImageFiles]:
    """The images of each split's files: uint8 arrays, or ImageFiles when streamed.

    ``stream``: "true", "false", or "auto" (stream when ``size`` is set and the in-memory
    path would peak above STREAM_ABOVE_BYTES, :func:`in_memory_peak_bytes`). Streamed files
    are inspected first (``verify``): an unreadable one fails now, named, not mid-epoch. ``channels`` None:
    RGB if any image has colour, else grayscale; ``size`` None: the images' own size,
    which must then be the same for all. Both span every split.
    """
    paths = [p for split in splits for p in split]
    bounds = np.cumsum([0] + [len(split) for split in splits])
    if stream == "auto":
        peak = in_memory_peak_bytes(len(paths), size, channels)
        stream = "true" if peak > STREAM_ABOVE_BYTES else "false"
    if stream == "false":
        # Decoded together: channels=None and the size check span every split.
        x = _decode_all(paths, channels, size)
        return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if verify:
        shape = common_format(inspect_images(paths), paths, size, channels)
    elif size is None or channels is None:
        raise ConfigError(
            "dataset.verify=false reads no image header, so it needs dataset.image_size and "
            "dataset.channels set"
        )
    else:
        shape = (int(size), int(size), int(channels))
    files = ImageFiles(paths, *shape)
    return [files[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def to_gray(x: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> grey [N, H, W, 1], by PIL's convert("L") formula."""
    from tripletlab.data.preprocess import conform_array

    return conform_array(x, None, 1)


def adapt_images(
    x: np.ndarray | ImageFiles, size: int | Sequence[int] | None, channels: int | None
) -> np.ndarray | ImageFiles:
    """Resize to ``size`` (N: N x N, or (H, W); None: keep) and convert to ``channels``
    (None: keep) by :func:`~tripletlab.data.preprocess.conform`; ImageFiles are only told
    to decode so. An array already so is returned as it is (no copy)."""
    from tripletlab.data.preprocess import conform_array

    if size is not None:
        size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if isinstance(x, ImageFiles):
        h, w = (x.height, x.width) if size is None else size
        c = x.channels if channels is None else channels
        return x if (h, w, c) == x.image_shape else x.with_format(h, w, c)
    h, w = tuple(x.shape[1:3]) if size is None else size
    c = x.shape[-1] if channels is None else int(channels)
    if (h, w, c) == tuple(x.shape[1:]):
        return x
    return conform_array(x, (h, w), c, out=aligned_empty((len(x), h, w, c)))


def conform_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 [N, h, w, c] (or [N, h, w]; c = 1..4, an alpha channel is dropped) -> [N, H, W,
    C] = ``shape``: the conversions of :func:`adapt_images`, as the run's data had them."""
    h, w, c = (int(s) for s in shape)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if tuple(x.shape[1:]) == (h, w, c):
        return np.ascontiguousarray(x)
    from tripletlab.data.preprocess import conform_array

    return conform_array(x, (h, w), c)
