"""Images as uint8 arrays: decoding a file, holding a split's files in memory or streamed,
and the conversions every dataset shares (resizing, grey <-> RGB).

Small datasets are uint8 numpy arrays [N, H, W, C]. Image files are streamed when holding
them in memory would take more than STREAM_ABOVE_BYTES at its peak (``dataset.stream=auto``,
:func:`in_memory_peak_bytes`) or when asked (``dataset.stream=true``): the split then holds
an :class:`~tripletlab.data.image_files.ImageFiles` index of paths in place of the array,
checked file by file before training starts (:func:`images_from_files`).

The conversions are PIL's: its luma formula for grey, bilinear resizing. The reuse commands
apply the same ones to a new image (:func:`conform_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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


def decode_image(path: Path, channels: int | None, size: int | None) -> np.ndarray:
    """Decode one image to uint8 [H, W, 1 or 3]; channels None keeps colour only if it has any.

    More than ``image_files.MAX_PIXELS`` pixels is refused before decoding (as streamed).
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > image_files.MAX_PIXELS:
                raise DataError(f"image {path} {image_files.too_many_pixels(im.width, im.height)}")
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                # PIL's convert("L") clips 16-bit samples at 255 instead of scaling them.
                im = Image.fromarray(
                    (np.asarray(im, np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
                )
            gray_mode = im.mode in ("1", "L", "LA", "F")
            mode = "L" if channels == 1 or (channels is None and gray_mode) else "RGB"
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, twice MAX_PIXELS
        raise DataError(
            f"image {path} has more pixels than the limit of {image_files.MAX_PIXELS:,} "
            f"({exc}); shrink it or remove it"
        ) from None
    # PIL raises many types for corrupt files (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; it is corrupt or not an image: fix or remove it"
        ) from None
    if arr.ndim == 2:
        return arr[..., None]
    if (
        channels is None
        and (arr[..., 0] == arr[..., 1]).all()
        and (arr[..., 1] == arr[..., 2]).all()
    ):
        return arr[..., :1]  # an RGB file with grey content counts as grayscale
    return arr


def aligned_empty(shape: Sequence[int], dtype: Any = np.uint8, align: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts at a multiple of ``align`` bytes:
    TensorFlow can then use it without a copy (:func:`tripletlab.pipeline.as_uint8_tensor`)."""
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
    # ITU-R 601-2 luma in PIL's fixed-point form, vectorised.
    x = x.astype(np.uint32)
    gray = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[..., None]


def adapt_images(
    x: np.ndarray | ImageFiles, size: int | Sequence[int] | None, channels: int | None
) -> np.ndarray | ImageFiles:
    """Resize to ``size`` (N: N x N, or (H, W); None: keep) with PIL's bilinear filter and
    convert to ``channels`` (None: keep); ImageFiles are only told to decode so.

    Grey conversion comes before resizing and RGB after, so each resize works on the fewest
    channels.
    """
    if size is not None:
        size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if isinstance(x, ImageFiles):
        h, w = (x.height, x.width) if size is None else size
        c = x.channels if channels is None else channels
        return x if (h, w, c) == x.image_shape else x.with_format(h, w, c)
    if channels == 1 and x.shape[-1] == 3:
        x = to_gray(x)
    if size is not None and tuple(x.shape[1:3]) != size:
        h, w = size
        out = np.empty((len(x), h, w, x.shape[-1]), np.uint8)
        for i, img in enumerate(x):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            resized = im.resize((w, h), Image.Resampling.BILINEAR)
            out[i] = np.asarray(resized).reshape(out.shape[1:])
        x = out
    if channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def conform_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 [N, h, w, c] (or [N, h, w]; an alpha channel is dropped) -> [N, H, W, C] =
    ``shape``: the conversions of :func:`adapt_images`, as the run's data had them."""
    h, w, c = (int(s) for s in shape)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 4:
        x = x[..., :3]
    return np.ascontiguousarray(adapt_images(x, (h, w), c))
