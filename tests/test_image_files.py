"""ImageFiles (images indexed on disk, decoded on demand) and the check of every file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tripletlab.errors import DataError
from tripletlab.image_files import (
    ImageFiles,
    ImageInfo,
    common_format,
    inspect_image,
    inspect_images,
)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _jpeg(path, shape=(24, 32, 3), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, np.uint8)).save(path)
    return path


def test_the_header_gives_size_and_colour(tmp_path):
    assert inspect_image(_jpeg(tmp_path / "c.jpg")) == ImageInfo(32, 24, True)
    grey = _png(tmp_path / "g.png", np.zeros((5, 7), np.uint8))
    assert inspect_image(grey) == ImageInfo(7, 5, False)
    deep = _png(tmp_path / "d.png", np.zeros((5, 7), np.uint16))
    assert inspect_image(deep) == ImageInfo(7, 5, False)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda p, raw: p.write_text("not an image"), "is not an image (it starts with b'not an "),
        (lambda p, raw: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p, raw: p.write_bytes(raw[: len(raw) // 2]), "is truncated or corrupt"),
        (lambda p, raw: p.unlink(), "does not exist"),
    ],
    ids=["text", "empty", "truncated", "missing"],
)
def test_bad_files_are_named_with_what_is_wrong(tmp_path, damage, says):
    good = [_jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    raw = good[1].read_bytes()
    damage(good[1], raw)
    assert says in inspect_image(good[1])
    with pytest.raises(DataError) as err:
        inspect_images(good)
    text = str(err.value)
    assert text.startswith("1 of 3 image file(s) cannot be used: ")
    assert f"{good[1]} {says}" in text and str(good[0]) not in text


def test_a_truncated_png_and_bytes_after_the_end_marker(tmp_path):
    png = _png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (30, 30), np.uint8))
    raw = png.read_bytes()
    png.write_bytes(raw[:-20])
    assert "is truncated or corrupt" in inspect_image(png)
    # Some cameras append data after the JPEG end marker: still a good image.
    jpg = _jpeg(tmp_path / "b.jpg")
    jpg.write_bytes(jpg.read_bytes() + b"\0" * 200)
    assert inspect_image(jpg) == ImageInfo(32, 24, True)


def test_many_bad_files_are_counted(tmp_path):
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_text("x")
    with pytest.raises(DataError, match=r"8 of 8 image file\(s\).*\(and 3 more\)"):
        inspect_images(paths)


def test_common_format(tmp_path):
    infos = [ImageInfo(8, 6, False), ImageInfo(8, 6, True)]
    assert common_format(infos, ["a", "b"], None, None) == (6, 8, 3)
    assert common_format(infos, ["a", "b"], 5, 1) == (5, 5, 1)
    with pytest.raises(DataError, match=r"images differ in size: a is 8x6 but b is 9x6"):
        common_format([infos[0], ImageInfo(9, 6, False)], ["a", "b"], None, None)


def test_image_files_behave_like_a_lazy_uint8_array(tmp_path):
    arrays = [np.full((6, 4, 3), 10 * i, np.uint8) for i in range(5)]
    paths = [_png(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)]
    files = ImageFiles(paths, 6, 4, 3)
    assert files.shape == (5, 6, 4, 3) and len(files) == 5 and files.nbytes == 5 * 72
    sub = files[np.array([4, 0])]
    assert isinstance(sub, ImageFiles) and list(sub.paths) == [str(paths[4]), str(paths[0])]
    assert isinstance(files[1:3], ImageFiles) and len(files[1:3]) == 2
    assert isinstance(files[np.arange(5) > 2], ImageFiles)
    np.testing.assert_array_equal(files[3], arrays[3])  # an integer decodes one image
    np.testing.assert_array_equal(np.asarray(sub), np.stack([arrays[4], arrays[0]]))
    both = ImageFiles.concatenate([files[:2], files[4:]])
    np.testing.assert_array_equal(both.read(), np.stack([arrays[0], arrays[1], arrays[4]]))
    with pytest.raises(ValueError, match="different shapes"):
        ImageFiles.concatenate([files, files.with_format(3, 3, 3)])


def test_decoding_converts_channels_and_resizes_like_pil(tmp_path):
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    path = _png(tmp_path / "c.png", smooth)  # 48 x 64
    files = ImageFiles([path], 24, 32, 3)
    ours = files[0].astype(np.int32)
    pil = np.asarray(Image.fromarray(smooth).resize((32, 24), Image.Resampling.BILINEAR))
    assert ours.shape == (24, 32, 3)
    assert np.abs(ours - pil).max() <= 2  # both average 2x2 blocks (antialiased bilinear)
    grey = files.with_format(48, 64, 1)[0]
    assert grey.shape == (48, 64, 1)
    luma = np.asarray(Image.fromarray(smooth).convert("L"), np.int32)
    assert np.abs(grey[..., 0].astype(np.int32) - luma).max() <= 1
    gray_file = _png(tmp_path / "g.png", smooth[..., 0])
    rgb = ImageFiles([gray_file], 48, 64, 3)[0]
    np.testing.assert_array_equal(rgb, np.repeat(smooth[..., :1], 3, axis=-1))
