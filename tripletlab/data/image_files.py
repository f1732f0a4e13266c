"""Images that stay on disk: an index of files, decoded by ``tf.data`` when a batch needs them.

:class:`ImageFiles` stands where a dataset's uint8 array [N, H, W, C] would be: it has the
array's ``shape``, ``len()`` and indexing, but holds only the paths (about 100 bytes per
image). Indexing with a slice or an index array gives another ImageFiles (nothing is
decoded); an integer index, ``np.asarray(files)`` or :meth:`ImageFiles.read` decode.
:mod:`tripletlab.data.pipeline` streams training and evaluation batches from it, decoding and
resizing in parallel.

:func:`inspect_images` checks every file before training starts: PIL reads the header
(format, size, colour mode; more than MAX_PIXELS pixels is refused), then TensorFlow, the
pipeline's own decoder, decodes every file in parallel (:func:`undecodable`), so a text file
named ``.jpg``, an empty file, a truncated JPEG/PNG or one garbled in the middle is reported
by name instead of failing mid-epoch. A file that fails later anyway (changed on disk, or
``dataset.verify=false``) is named by :meth:`ImageFiles.find_unreadable`, which the code that
iterates over decoded files calls on TensorFlow's error. Only numpy and PIL are imported here;
TensorFlow is imported by the functions that decode.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tripletlab.errors import DataError

# Formats that tf.io.decode_image reads (it goes by the file's bytes, not its name).
TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
TAIL_BYTES = 64  # the end marker is looked for in the last TAIL_BYTES bytes
MAX_LISTED = 5  # bad files named in one error message
INSPECT_THREADS = 8  # header reads are small and wait on the disk
# Most pixels (width x height) an image may have, in every path (in memory and streamed): PIL's
# own decompression-bomb limit (a 256 MiB greyscale image); a module constant so tests can
# lower it. A small file can declare a huge image, which decoding would then allocate.
MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: width, height and whether it has colour."""

    width: int
    height: int
    colour: bool


def _has_end_marker(fmt: str, tail: bytes) -> bool | None:
    """True/False when the format has an end marker (JPEG EOI, PNG IEND); None otherwise."""
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail
    return None


def decode_error(path: str) -> str | None:
    """TensorFlow (the pipeline's decoder, stricter than PIL: it rejects a PNG without its
    IEND chunk) decodes the whole file: None if it can, else why not."""
    import tensorflow as tf

    from tripletlab.data.preprocess import decode_native

    try:
        decode_native(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        text = exc.message.split(" [Op:")[0].split("}}")[-1].strip()  # drop TF's op names
        return text or type(exc).__name__
    return None


def tf_decode_errors() -> tuple[type[Exception], ...]:
    """TensorFlow's errors when a file cannot be read or decoded (deleted: NotFoundError)."""
    import tensorflow as tf

    return (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError)


def too_many_pixels(width: int, height: int) -> str:
    """The sentence refusing a width x height image over MAX_PIXELS."""
    return (
        f"has {width}x{height} = {width * height:,} pixels, more than the limit of "
        f"{MAX_PIXELS:,} (decoding it could exhaust memory); shrink it or remove it"
    )


def header_pixels(path: bytes | str) -> int:
    """width x height from the file's header (PIL reads only the header); -1 when PIL cannot
    read it (the decoder then says why), MAX_PIXELS + 1 when PIL itself calls it a bomb."""
    try:
        with Image.open(os.fsdecode(path)) as im:
            return im.width * im.height
    except Image.DecompressionBombError:
        return MAX_PIXELS + 1
    except Exception:  # unreadable: tf.io.decode_image reports it
        return -1


def inspect_image(path: str | os.PathLike) -> ImageInfo | str:
    """The header of one image file, or a sentence saying what is wrong with it."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
        if size == 0:
            return "is empty (0 bytes)"
        with Image.open(path) as im:
            width, height, mode, fmt = im.width, im.height, im.mode, im.format
    except FileNotFoundError:
        return "does not exist"
    except UnidentifiedImageError:
        return f"is not an image (it starts with {head[:8]!r})"
    except Image.DecompressionBombError as exc:  # PIL's own limit, twice MAX_PIXELS
        return f"has more pixels than the limit of {MAX_PIXELS:,} ({exc}); shrink it or remove it"
    except OSError as exc:
        if "truncated" in str(exc).lower():
            return f"is truncated or corrupt ({exc})"
        return f"cannot be read: {exc.strerror or exc}"
    except Exception as exc:  # a damaged header makes PIL raise SyntaxError, struct.error...
        return f"has a damaged header: {exc}"
    if fmt not in TF_FORMATS:
        return f"is a {fmt} image, which TensorFlow cannot decode; convert it to JPEG or PNG"
    if width < 1 or height < 1:
        return f"has no pixels ({width}x{height})"
    if width * height > MAX_PIXELS:
        return too_many_pixels(width, height)
    if _has_end_marker(fmt, tail) is False:
        # Some writers append bytes after the end marker: only a failed decode condemns it.
        error = decode_error(path)
        if error is not None:
            return f"is truncated or corrupt ({error}; no {fmt} end marker)"
    return ImageInfo(width, height, mode not in GRAY_MODES)


def undecodable(paths: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """The files that TensorFlow (the pipeline's decoder) cannot decode in full, each with
    why, in order. Every file is decoded, in parallel by tf.data: a JPEG garbled in the
    middle has a valid header and end marker, and only its scan data shows the fault."""
    return _decode_every(paths)[0]


def _decode_every(
    paths: Sequence[str | os.PathLike],
) -> tuple[list[tuple[str, str]], dict[str, bool]]:
    """Every file decoded as the pipeline does: (the undecodable ones with why, in order;
    {path: whether its decoded pixels have colour} for the others,
    :func:`tripletlab.data.preprocess.has_colour`)."""
    import tensorflow as tf

    if not len(paths):
        return [], {}

    from tripletlab.data.preprocess import decode_native, has_colour

    def decodes(path):
        return path, has_colour(decode_native(tf.io.read_file(path)))

    names = [str(p) for p in paths]
    files = tf.data.Dataset.from_tensor_slices(path_tensor(names))
    decoded = files.map(decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    # ignore_errors drops the files that fail; the ones missing from what comes out are bad.
    good = {os.fsdecode(p): bool(c) for p, c in decoded.ignore_errors().as_numpy_iterator()}
    bad = [
        (p, f"cannot be decoded ({decode_error(p) or 'unknown error'})")
        for p in names
        if p not in good
    ]
    return bad, good


def path_tensor(paths: Sequence[str | os.PathLike]):
    """A tf.string tensor of file paths, as their bytes on disk (``os.fsencode``): a name that
    is not UTF-8 (surrogates in Python) cannot be converted as text."""
    import tensorflow as tf

    return tf.constant([os.fsencode(p) for p in paths], tf.string)


def inspect_images(paths: Sequence[str | os.PathLike], decode: bool = True) -> list[ImageInfo]:
    """Every file's header, in order; one DataError naming the bad files if any is bad.

    ``decode``: also decode every file whose header is good (:func:`undecodable`).
    """
    with ThreadPoolExecutor(INSPECT_THREADS) as pool:
        results = list(pool.map(inspect_image, paths, chunksize=64))
    bad = [(p, r) for p, r in zip(paths, results, strict=True) if isinstance(r, str)]
    if decode and not bad:
        bad, colours = _decode_every(paths)
        # Colour as the in-memory path decides it, from the pixels (an RGB or palette file
        # of grey pixels is grey), so streamed and in-memory data get the same channels.
        results = [
            dataclasses.replace(info, colour=colours.get(str(p), info.colour))
            for p, info in zip(paths, results, strict=True)
        ]
    if bad:
        listed = "; ".join(f"{p} {why}" for p, why in bad[:MAX_LISTED])
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise DataError(
            f"{len(bad)} of {len(paths)} image file(s) cannot be used: {listed}{more}; "
            "fix or remove them"
        )
    return results  # type: ignore[return-value]


def common_format(
    infos: Sequence[ImageInfo],
    paths: Sequence[str | os.PathLike],
    size: int | None,
    channels: int | None,
) -> tuple[int, int, int]:
    """(height, width, channels) for all images: ``size`` x ``size`` if given, else their
    common native size (an error naming two files that differ); ``channels`` if given, else
    3 if any header has colour, else 1."""
    if size is not None:
        height = width = int(size)
    else:
        first = infos[0]
        for info, path in zip(infos, paths, strict=True):
            if (info.width, info.height) != (first.width, first.height):
                raise DataError(
                    f"images differ in size: {paths[0]} is {first.width}x{first.height} but "
                    f"{path} is {info.width}x{info.height}; set dataset.image_size=N to resize "
                    "them all to N x N"
                )
        height, width = first.height, first.width
    if channels is None:
        channels = 3 if any(info.colour for info in infos) else 1
    return height, width, int(channels)


# --------------------------------------------------------------------------- decoding


def decode_file(path, height: int, width: int, channels: int):
    """TensorFlow: one file (a string tensor) -> uint8 [height, width, channels], by the one
    preprocessing path (:func:`tripletlab.data.preprocess.decode`: the file's own channels
    converted, resized bilinearly with antialiasing, no resizing at the right size).

    ``tf.io.decode_image`` goes by the bytes (a PNG named .jpg decodes). A file whose header
    declares more than MAX_PIXELS pixels fails before it is decoded (InvalidArgumentError,
    like any undecodable file; :meth:`ImageFiles.find_unreadable` then names it).
    """
    import tensorflow as tf

    from tripletlab.data.preprocess import decode

    # PIL reads the header (a few hundred bytes) so that a bomb is never decoded.
    pixels = tf.numpy_function(header_pixels, [path], tf.int64, stateful=False)
    within_limit = tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_PIXELS, tf.int64), message="image over the pixel limit"
    )
    with tf.control_dependencies([within_limit]):
        contents = tf.io.read_file(path)
    out = decode(contents, height, width, channels)
    out.set_shape([height, width, channels])
    return out


class ImageFiles:
    """A read-only uint8 "array" [N, H, W, C] of image files, decoded on demand.

    ``paths``: N files; every image is decoded to ``channels`` (1 or 3) and resized to
    ``height`` x ``width``.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, paths: Iterable[str | os.PathLike], height: int, width: int, channels: int):
        self.paths = np.array([str(p) for p in paths], dtype=object)
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.height, self.width, self.channels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def nbytes(self) -> int:
        """What the decoded images would take in memory."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, image_shape={self.image_shape})"

    def _like(self, paths: np.ndarray) -> ImageFiles:
        return ImageFiles(paths, self.height, self.width, self.channels)

    def __getitem__(self, key: Any) -> ImageFiles | np.ndarray:
        """An integer decodes that image (uint8 [H, W, C]); a slice or index array gives the
        ImageFiles of those files, still on disk."""
        if isinstance(key, (int, np.integer)):
            return self.read_indices([int(key)])[0]
        return self._like(self.paths[key])

    def with_format(self, height: int, width: int, channels: int) -> ImageFiles:
        """The same files, decoded to another size or number of channels."""
        return ImageFiles(self.paths, height, width, channels)

    @staticmethod
    def concatenate(parts: Sequence[ImageFiles]) -> ImageFiles:
        shapes = {p.image_shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate ImageFiles of different shapes {shapes}")
        first = parts[0]
        return first._like(np.concatenate([p.paths for p in parts]))

    def dataset(self):
        """``tf.data.Dataset`` of uint8 images [H, W, C] in order, decoded in parallel."""
        import tensorflow as tf

        h, w, c = self.image_shape
        files = tf.data.Dataset.from_tensor_slices(path_tensor(list(self.paths)))
        return files.map(
            lambda p: decode_file(p, h, w, c),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def find_unreadable(self, start: int = 0) -> DataError | None:
        """After TensorFlow failed to decode one of these files (its message names none): the
        first file from index ``start`` on that cannot be used, as a DataError naming it and
        what to do; None if every one decodes. Slow (one file at a time): for the failure
        path only, with ``start`` the number of images that came out before the error."""
        for path in self.paths[int(start) :]:
            found = inspect_image(path)
            why = found if isinstance(found, str) else None
            if why is None:
                error = decode_error(path)
                why = None if error is None else f"cannot be decoded ({error})"
            if why is not None:
                return DataError(
                    f"image file {path} {why}; fix or remove it (dataset.verify=true checks "
                    "every file before training)"
                )
        return None

    def read_indices(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the images at ``indices``: uint8 [len(indices), H, W, C]."""
        return self._like(self.paths[np.asarray(indices, dtype=np.int64)]).read()

    def read(self, batch_size: int = 256) -> np.ndarray:
        """Decode every image: uint8 [N, H, W, C] (as much memory as :attr:`nbytes`)."""
        out = np.empty(self.shape, np.uint8)
        if len(self) == 0:
            return out
        start = 0
        try:
            for batch in self.dataset().batch(batch_size):
                out[start : start + len(batch)] = batch.numpy()
                start += len(batch)
        except tf_decode_errors():
            unreadable = self.find_unreadable(start)
            if unreadable is None:
                raise
            raise unreadable from None
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self.read()
        return images if dtype is None else images.astype(dtype)


def as_image_files(paths: Sequence[Path], size: int | None, channels: int | None) -> ImageFiles:
    """Inspect every file (errors name them) and index them for streaming."""
    infos = inspect_images(paths)
    return ImageFiles(paths, *common_format(infos, paths, size, channels))
