"""ImageFiles (images indexed on disk, decoded on demand) and the check of every file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tripletlab.data.image_files import (
    ImageFiles,
    ImageInfo,
    common_format,
    inspect_image,
    inspect_images,
)
from tripletlab.errors import DataError


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


def _garble_the_middle(path):
    """Overwrite 200 bytes in the middle of the scan data; header and end marker intact."""
    raw = path.read_bytes()
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + b"\xff" * 200 + raw[middle + 200 :])
    assert path.read_bytes()[-2:] == b"\xff\xd9"
    return path


def test_a_jpeg_garbled_in_the_middle_fails_the_check(tmp_path):
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # PIL would then accept a truncated file
    paths = [_jpeg(tmp_path / f"{i}.jpg", shape=(64, 64, 3), seed=i) for i in range(3)]
    _garble_the_middle(paths[1])
    # Its header and end marker are fine: only decoding every byte finds the fault.
    assert inspect_image(paths[1]) == ImageInfo(64, 64, True)
    with pytest.raises(DataError) as err:
        inspect_images(paths)
    text = str(err.value)
    assert text.startswith("1 of 3 image file(s) cannot be used: ")
    assert f"{paths[1]} cannot be decoded (" in text and str(paths[0]) not in text


def test_a_file_that_fails_to_decode_later_is_named(tmp_path):
    paths = [_jpeg(tmp_path / f"{i}.jpg", shape=(64, 64, 3), seed=i) for i in range(6)]
    files = ImageFiles(paths, 64, 64, 3)
    _garble_the_middle(paths[4])
    with pytest.raises(DataError, match=rf"image file {paths[4]} cannot be decoded \("):
        files.read(batch_size=2)
    assert files.find_unreadable(start=5) is None  # the ones after it are fine
    paths[2].unlink()
    assert f"image file {paths[2]} does not exist" in str(files.find_unreadable())


def test_images_over_the_pixel_limit_are_refused_in_every_path(tmp_path, monkeypatch):
    from tripletlab.data import decode_image, image_files

    paths = [_jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    big = _jpeg(tmp_path / "big.jpg", shape=(40, 50, 3))
    limit = 24 * 32  # the small ones are exactly at the limit: allowed
    monkeypatch.setattr(image_files, "MAX_PIXELS", limit)
    says = f"has 50x40 = 2,000 pixels, more than the limit of {limit:,}"
    assert says in inspect_image(big)  # dataset.verify=true
    with pytest.raises(DataError, match=f"cannot read image {big}: it {says}"):
        decode_image(big, 3, 24)  # in memory: refused before it is decoded
    # Streamed without the check: refused before TensorFlow decodes it, and named.
    assert ImageFiles(paths, 24, 32, 3).read().shape == (3, 24, 32, 3)
    with pytest.raises(DataError, match=f"image file {big} {says}"):
        ImageFiles([*paths, big], 24, 32, 3).read()


def _png_bomb(path, side: int) -> None:
    """A 1-bit side x side PNG of zeros: a file of some kilobytes declaring side**2 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_png_bomb_is_refused_unchecked_and_streamed_without_being_decoded(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb, 20_000)  # 400 million pixels, beyond PIL's own limit too
    assert bomb.stat().st_size < 100_000
    good = _jpeg(tmp_path / "good.jpg")
    with pytest.raises(DataError, match=f"image file {bomb} has more pixels than the limit"):
        ImageFiles([good, bomb], 24, 32, 1).read()
