"""Attack on "one preprocessing path" (issue 25, part 7), with variants of its own.

- Unusual files (EXIF rotation, 16-bit PNG, CMYK and progressive JPEG, animated GIF, palette
  with transparency, 1-pixel and 1x500 images, large down- and upscaling, WebP) give the
  same uint8 pixels through the in-memory decoder, tripletlab-embed, the streamed files and
  the exported SavedModel.
- ``dataset.channels=null`` picks the same channels in memory and streamed. Broke before:
  a grey JPEG or PNG saved as RGB, a grey palette, GIF or BMP was 1 channel in memory and
  3 streamed (the header's mode), so ``dataset.stream`` changed the model's input.
- An animated WebP is one error naming it on every path. Broke before: TensorFlow's decoder
  corrupted memory and aborted the process (no message).
- No other resize, in any spelling of the libraries tripletlab could use.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT


def _rgb(w: int, h: int, rng) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png16(w: int, h: int, rng) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    pixels = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def _odd_files(root: Path) -> list[Path]:
    rng = np.random.default_rng(5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: no decoder here applies it, every path alike
    made = {
        "exif.jpg": lambda p: _rgb(12, 6, rng).save(p, exif=exif),
        "grey16.png": lambda p: Image.fromarray(rng.integers(0, 65536, (9, 7), np.uint16)).save(p),
        "rgb16.png": lambda p: p.write_bytes(_png16(6, 5, rng)),
        "cmyk.jpg": lambda p: _rgb(10, 10, rng).convert("CMYK").save(p),
        "progressive.jpg": lambda p: _rgb(33, 17, rng).save(p, progressive=True),
        "anim.gif": lambda p: _rgb(10, 10, rng).save(
            p, save_all=True, append_images=[_rgb(10, 10, rng) for _ in range(2)]
        ),
        "ptrans.png": lambda p: _rgb(9, 9, rng).convert("P").save(p, transparency=0),
        "la.png": lambda p: _rgb(7, 5, rng).convert("LA").save(p),
        "one.png": lambda p: _rgb(1, 1, rng).save(p),
        "wide.png": lambda p: _rgb(500, 1, rng).save(p),
        "tall.png": lambda p: _rgb(1, 500, rng).save(p),
        "big.png": lambda p: _rgb(700, 300, rng).save(p),
        "still.webp": lambda p: _rgb(13, 11, rng).save(p),
        "lossless.webp": lambda p: _rgb(13, 11, rng).save(p, lossless=True),
        "grey_rgb.jpg": lambda p: _rgb(8, 8, rng).convert("L").convert("RGB").save(p),
        "bmp_palette.bmp": lambda p: _rgb(8, 8, rng).convert("P").save(p),
    }
    paths = []
    for name, make in made.items():
        path = root / name
        make(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("shape", [(8, 8, 1), (16, 16, 3), (64, 40, 3)], ids=str)
def test_odd_files_give_the_same_pixels_through_every_path(tmp_path, shape):
    import keras
    import tensorflow as tf

    from tripletlab.data import decode_image
    from tripletlab.data.image_files import ImageFiles
    from tripletlab.reuse.embed import read_images
    from tripletlab.reuse.export import ServingFunctions, write_saved_model

    files = _odd_files(tmp_path)
    h, w, c = shape
    reference = read_images(files, shape)
    model = keras.Sequential([keras.Input(shape), keras.layers.Rescaling(255.0)])
    (tmp_path / "export").mkdir()
    write_saved_model(ServingFunctions(model), tmp_path / "export")
    export = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    encoded = export.signatures["serve_encoded"](
        encoded=tf.constant([p.read_bytes() for p in files])
    )
    paths = {
        "decode_image": np.stack([decode_image(p, c, (h, w)) for p in files]),
        "streamed": ImageFiles(files, h, w, c).read(batch_size=3),
        "export": np.round(encoded["embeddings"].numpy()).astype(np.uint8),
    }
    assert reference.shape == (len(files), *shape)
    for name, pixels in paths.items():
        np.testing.assert_array_equal(pixels, reference, err_msg=name)


def test_an_image_at_the_model_size_is_untouched(tmp_path):
    from tripletlab.data import decode_image

    rng = np.random.default_rng(1)
    for size in [(1, 1), (8, 8), (5, 37)]:
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "x.png")
        np.testing.assert_array_equal(decode_image(tmp_path / "x.png", 3, size), pixels)


GREY_LOOKING = {
    "rgb.png": lambda im: im.convert("RGB"),
    "rgb.jpg": lambda im: im.convert("RGB"),
    "rgba.png": lambda im: im.convert("RGBA"),
    "palette.png": lambda im: im.convert("P"),
    "palette.gif": lambda im: im,
    "palette.bmp": lambda im: im.convert("P"),
    "rgb.bmp": lambda im: im.convert("RGB"),
    "rgb.webp": lambda im: im.convert("RGB"),  # saved lossless: lossy WebP is YUV
}


@pytest.mark.parametrize("kind", sorted(GREY_LOOKING))
def test_channels_null_are_the_same_in_memory_and_streamed(tmp_path, kind):
    from tripletlab.data.images import images_from_files

    rng = np.random.default_rng(3)
    grey = Image.fromarray(rng.integers(0, 256, (6, 9), dtype=np.uint8))
    paths = []
    for i in range(2):
        path = tmp_path / f"{i}{kind}"
        GREY_LOOKING[kind](grey.rotate(90 * i)).save(path, lossless=True)
        paths.append(path)
    (memory,) = images_from_files([paths], None, 8, stream="false")
    (streamed,) = images_from_files([paths], None, 8, stream="true")
    assert memory.shape == streamed.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(streamed), memory)
    # One colour pixel makes it RGB on both paths.
    coloured = np.asarray(GREY_LOOKING["rgb.png"](grey)).copy()
    coloured[0, 0] = (255, 0, 0)
    Image.fromarray(coloured).save(tmp_path / "colour.png")
    paths.append(tmp_path / "colour.png")
    (memory,) = images_from_files([paths], None, 8, stream="false")
    (streamed,) = images_from_files([paths], None, 8, stream="true")
    assert memory.shape == streamed.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(streamed), memory)


ANIMATED = """
import sys
import numpy as np
from pathlib import Path
from PIL import Image
from tripletlab.data import decode_image
from tripletlab.data.image_files import ImageFiles, inspect_images
from tripletlab.errors import DataError

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for frames in (2, 3):
    for mode in ("RGB", "RGBA"):
        for lossless in (False, True):
            ims = [Image.fromarray(rng.integers(0, 256, (9, 7, len(mode)), np.uint8), mode)
                   for _ in range(frames)]
            path = root / f"anim_{frames}_{mode}_{lossless}.webp"
            ims[0].save(path, save_all=True, append_images=ims[1:], lossless=lossless)
            for name, read in [
                ("decode_image", lambda: decode_image(path, 3, (8, 8))),
                ("inspect", lambda: inspect_images([path])),
                ("streamed", lambda: ImageFiles([path], 8, 8, 3).read()),
            ]:
                try:
                    read()
                except DataError as exc:
                    assert str(path) in str(exc) and "animated WebP" in str(exc), str(exc)
                else:
                    raise AssertionError(f"{name} read {path}")
print("ok")
"""


def test_an_animated_webp_is_one_error_on_every_path(tmp_path):
    # In a subprocess: with the bug back, TensorFlow's decoder aborts the process.
    proc = subprocess.run(
        [sys.executable, "-c", ANIMATED, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# Calls that resize an image, in each library's spellings (test_preprocess.py's list and more).
RESIZE = re.compile(
    r"image\.resize|image_ops\.resize|crop_and_resize|resize_with_(pad|crop_or_pad)|"
    r"ScaleAndTranslate|scale_and_translate|Resizing\b|Resampling|\.resize\(|\.thumbnail\(|"
    r"\.reduce\(\s*\d|\.draft\(|ImageOps\.(fit|contain|pad|cover|scale)|\bcv2\b|skimage|"
    r"ndimage\.zoom|smart_resize|upsampling2d|UpSampling2D|interpolate\("
)


def test_nothing_else_resizes_an_image_in_any_spelling():
    found = []
    for path in sorted((ROOT / "tripletlab").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if RESIZE.search(line.split("#")[0]):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert len(found) == 1 and found[0].startswith("tripletlab/data/preprocess.py:"), found
    assert 'method="bilinear", antialias=True' in found[0]
