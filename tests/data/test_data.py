"""Tests for tripletlab.data: IDX files, the search order, downloads, digits, image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers import (
    closed_port_url,
    idx_arrays,
    isolate_data_search,
    serve_folder,
    write_idx_folder,
    write_image,
    write_image_folder,
)
from tripletlab import data
from tripletlab.data import (
    IDX_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    find_idx_folder,
    idx,
    images,
    load_dataset,
    read_idx,
    search_locations,
    write_idx,
)
from tripletlab.data.idx import FASHION_MNIST_CLASSES
from tripletlab.errors import ConfigError, DataError
from tripletlab.options.dataset import DatasetConfig, DigitsConfig, ImageFolderConfig
from tripletlab.registry import schema_for

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's data, home folder or proxies."""
    return isolate_data_search(tmp_path, monkeypatch)


def idx_cfg(**kwargs) -> DatasetConfig:
    kwargs.setdefault("name", "fashion_mnist")
    kwargs.setdefault("download", False)  # tests never reach the real mirror
    return schema_for("dataset", kwargs["name"])(**kwargs)


def home_folder(tmp_path: Path, folder: str = "fashion-mnist") -> Path:
    return tmp_path / "home" / ".keras" / "datasets" / folder


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob(".*part*")) if folder.exists() else True


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(7, dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    ],
    ids=["u8-3d", "u8-1d", "i32", "f32"],
)
def test_idx_round_trip(tmp_path, suffix, array):
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_write_idx_is_reproducible_and_leaves_no_temp_file(tmp_path):
    x, _ = idx_arrays(5)
    write_idx(tmp_path / "a.gz", x)
    first = (tmp_path / "a.gz").read_bytes()
    write_idx(tmp_path / "a.gz", x)
    assert (tmp_path / "a.gz").read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_write_idx_rejects_what_idx_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "a", np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "a", np.uint8(3))


def test_wrong_magic_says_expected_and_found(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros(4, np.uint8))  # a labels file where images are expected
    with pytest.raises(DataError) as err:
        read_idx(path, IMAGES_MAGIC)
    msg = str(err.value)
    assert str(path) in msg and "wrong magic number" in msg
    assert "expected 0x00000803" in msg and "found 0x00000801" in msg and "swapped" in msg


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "notes"
    path.write_bytes(b"hello, world")
    with pytest.raises(DataError, match="wrong magic number") as err:
        read_idx(path)
    assert str(path) in str(err.value) and "0x68656c6c" in str(err.value)


def test_gzip_content_without_gz_suffix_gets_a_hint(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    (tmp_path / "a.gz").rename(tmp_path / "a")
    with pytest.raises(DataError, match="give it a .gz suffix"):
        read_idx(tmp_path / "a", LABELS_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_says_expected_and_found_bytes(tmp_path, gz):
    x = np.zeros((5, 4, 4), np.uint8)
    write_idx(tmp_path / "full", x)
    raw = (tmp_path / "full").read_bytes()[:90]  # 16 header + 80 data = 96 bytes
    path = tmp_path / ("cut.gz" if gz else "cut")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError) as err:
        read_idx(path, IMAGES_MAGIC)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert "expected 96 bytes" in msg and "found 90" in msg


def test_truncated_header(tmp_path):
    path = tmp_path / "cut"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5]))
    with pytest.raises(DataError, match=r"header needs 16 bytes, found 8"):
        read_idx(path)


def test_extra_bytes_are_an_error(tmp_path):
    path = tmp_path / "long"
    write_idx(path, np.zeros(3, np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"extra bytes.*expected 11 bytes.*found 12"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["cut", "flip", "not-gzip"])
def test_corrupt_gz(tmp_path, damage):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(200, dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    if damage == "cut":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        raw[-6] ^= 0xFF  # the CRC too, so the damage cannot go unnoticed
    else:
        raw = bytearray(b"plain text, not gzip")
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "not a valid gzip file" in str(err.value)


def _gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """``header`` then ``zeros`` zero bytes, gzip-compressed a MiB at a time (a small file)."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            out.write(block)


def test_a_gz_bomb_is_refused_without_being_decompressed(tmp_path):
    import tracemalloc

    # A valid header declaring 10 images of 28x28 (7,856 bytes), then 200 MB of zeros.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(
        path, bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10, 28, 28)), 200 << 20
    )
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            read_idx(path, IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{path} has extra bytes at the end: expected 7856 bytes" in str(err.value)
    assert peak < 8 << 20  # decompressing it whole would hold 200 MB


def test_a_header_declaring_an_absurd_size_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    dims = (100_000, 10_000, 10_000)  # 10 TB of pixels, declared by a 50-byte file
    _gzip_bomb(path, bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in dims), 0)
    with pytest.raises(DataError) as err:
        read_idx(path, IMAGES_MAGIC)
    message = str(err.value)
    assert f"{path} declares 10,000,000,000,016 bytes in its header" in message
    assert f"more than the limit of {idx.MAX_IDX_BYTES:,}" in message


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.gz is empty"):
        read_idx(tmp_path / "empty.gz")
    with pytest.raises(DataError, match=r"nothing does not exist"):
        read_idx(tmp_path / "nothing")


# --------------------------------------------------------------------------- IDX datasets


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_folder(tmp_path, gz):
    arrays = write_idx_folder(tmp_path / "fm", gz=gz)
    ds = load_dataset(idx_cfg(root=str(tmp_path / "fm")))
    assert ds.x_train.shape == (20, 6, 6, 1) and ds.x_test.shape == (10, 6, 6, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.num_classes == 10
    assert ds.image_shape == (6, 6, 1)
    assert ds.source == str(tmp_path / "fm")
    assert "train=20" in repr(ds)


def test_mnist_uses_its_folder_and_digit_names(tmp_path):
    write_idx_folder(home_folder(tmp_path, "mnist"))
    ds = load_dataset(idx_cfg(name="mnist"))
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.source == str(home_folder(tmp_path, "mnist"))


def test_image_and_label_counts_differ(tmp_path):
    folder = tmp_path / "fm"
    write_idx_folder(folder)
    labels = folder / f"{IDX_FILES['train_labels']}.gz"
    write_idx(labels, np.zeros(19, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(idx_cfg(root=str(folder)))
    msg = str(err.value)
    assert str(folder / f"{IDX_FILES['train_images']}.gz") in msg and str(labels) in msg
    assert "20 images" in msg and "19 labels" in msg


def test_swapped_files_in_a_folder(tmp_path):
    folder = tmp_path / "fm"
    arrays = write_idx_folder(folder)
    images = folder / f"{IDX_FILES['test_images']}.gz"
    write_idx(images, arrays["test_labels"])
    with pytest.raises(DataError, match="swapped") as err:
        load_dataset(idx_cfg(root=str(folder)))
    assert str(images) in str(err.value)


def test_label_out_of_range(tmp_path):
    folder = tmp_path / "fm"
    write_idx_folder(folder)
    labels = folder / f"{IDX_FILES['test_labels']}.gz"
    write_idx(labels, np.full(10, 12, np.uint8))
    with pytest.raises(DataError, match=r"label 12, but fashion_mnist has 10 classes") as err:
        load_dataset(idx_cfg(root=str(folder)))
    assert str(labels) in str(err.value)


def test_search_order(tmp_path, monkeypatch):
    # Each location holds a different number of training images, so n_train tells them apart.
    root = tmp_path / "root"
    env = tmp_path / "env"
    write_idx_folder(root, n_train=21)
    write_idx_folder(env / "fashion-mnist", n_train=22)
    write_idx_folder(tmp_path / "system" / "fashion-mnist", n_train=23)
    write_idx_folder(home_folder(tmp_path), n_train=24)
    monkeypatch.setenv("TRIPLETLAB_DATA", str(env))
    assert search_locations("fashion_mnist") == [
        env / "fashion-mnist",
        tmp_path / "system" / "fashion-mnist",
        home_folder(tmp_path),
    ]
    assert search_locations("fashion_mnist", root) == [root]

    assert len(load_dataset(idx_cfg(root=str(root))).x_train) == 21
    assert len(load_dataset(idx_cfg()).x_train) == 22
    monkeypatch.delenv("TRIPLETLAB_DATA")
    assert len(load_dataset(idx_cfg()).x_train) == 23
    monkeypatch.setattr(idx, "SYSTEM_DATASETS", tmp_path / "elsewhere")
    assert len(load_dataset(idx_cfg()).x_train) == 24
    assert find_idx_folder("fashion_mnist") == home_folder(tmp_path)


def test_a_given_root_is_the_only_place_searched(tmp_path):
    write_idx_folder(home_folder(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(idx_cfg(root=str(empty), download=True))
    msg = str(err.value)
    assert f"dataset.root={empty} lacks" in msg and "train-images-idx3-ubyte[.gz]" in msg
    with pytest.raises(DataError, match=r"dataset.root=.*nowhere does not exist"):
        load_dataset(idx_cfg(root=str(tmp_path / "nowhere")))


def test_incomplete_location_is_passed_over_and_reported(tmp_path, monkeypatch):
    env = tmp_path / "env"
    arrays = write_idx_folder(env / "fashion-mnist")
    (env / "fashion-mnist" / f"{IDX_FILES['test_labels']}.gz").unlink()
    monkeypatch.setenv("TRIPLETLAB_DATA", str(env))
    with pytest.raises(DataError, match=r"fashion-mnist: lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset(idx_cfg())
    write_idx_folder(tmp_path / "system" / "fashion-mnist", n_train=len(arrays["train_images"]) + 1)
    assert len(load_dataset(idx_cfg()).x_train) == 21


def test_missing_everywhere_lists_every_location_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETLAB_DATA", str(tmp_path / "env"))
    assert find_idx_folder("fashion_mnist") is None
    with pytest.raises(DataError) as err:
        load_dataset(idx_cfg())
    msg = str(err.value)
    for location in search_locations("fashion_mnist"):
        assert f"{location}: does not exist" in msg
    for fix in ("apt-get install dataset-fashion-mnist", "TRIPLETLAB_DATA=", "dataset.root="):
        assert fix in msg
    assert "dataset.download=true" in msg


def test_missing_mnist_does_not_suggest_the_fashion_package():
    with pytest.raises(DataError) as err:
        load_dataset(idx_cfg(name="mnist"))
    assert "apt-get" not in str(err.value) and "TRIPLETLAB_DATA is not set" in str(err.value)


# --------------------------------------------------------------------------- downloads


def test_download_from_a_local_mirror(tmp_path):
    arrays = write_idx_folder(tmp_path / "mirror")
    with serve_folder(tmp_path / "mirror") as url:
        ds = load_dataset(idx_cfg(download=True, url=url, allow_insecure_url=True))
    target = home_folder(tmp_path)
    assert ds.source == url
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train_images"])
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES.values())
    # The next run finds the files without the mirror.
    again = load_dataset(idx_cfg())
    assert again.source == str(target)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_download_goes_to_tripletlab_data_and_fetches_only_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETLAB_DATA", str(tmp_path / "env"))
    target = tmp_path / "env" / "fashion-mnist"
    write_idx_folder(target)
    write_idx_folder(tmp_path / "mirror")
    for key in ("train_images", "train_labels"):
        (tmp_path / "mirror" / f"{IDX_FILES[key]}.gz").unlink()  # asked for them: a 404
        (target / f"{IDX_FILES[key.replace('train', 'test')]}.gz").unlink()
    with serve_folder(tmp_path / "mirror") as url:
        ds = load_dataset(idx_cfg(download=True, url=url, allow_insecure_url=True))
    assert len(ds.x_train) == 20 and len(ds.x_test) == 10
    assert not home_folder(tmp_path).exists()


def test_failed_download_names_the_url_and_leaves_nothing(tmp_path):
    write_idx_folder(tmp_path / "mirror")
    (tmp_path / "mirror" / f"{IDX_FILES['test_labels']}.gz").unlink()
    with serve_folder(tmp_path / "mirror") as url, pytest.raises(DataError) as err:
        load_dataset(idx_cfg(download=True, url=url, allow_insecure_url=True))
    msg = str(err.value)
    assert f"{url}t10k-labels-idx1-ubyte.gz" in msg and "404" in msg
    assert "Searched, in order" in msg and "fetch the files by hand" in msg
    # The three good files stay (atomic, checked); a retry only needs the missing one.
    assert len(list(home_folder(tmp_path).iterdir())) == 3
    assert no_temp_files(home_folder(tmp_path))


def test_corrupt_download_never_takes_the_real_name(tmp_path):
    write_idx_folder(tmp_path / "mirror")
    (tmp_path / "mirror" / f"{IDX_FILES['train_images']}.gz").write_bytes(b"<html>oops</html>")
    with serve_folder(tmp_path / "mirror") as url, pytest.raises(DataError) as err:
        load_dataset(idx_cfg(download=True, url=url, allow_insecure_url=True))
    assert "train-images-idx3-ubyte.gz is not a valid gzip file" in str(err.value)
    assert not (home_folder(tmp_path) / f"{IDX_FILES['train_images']}.gz").exists()
    assert no_temp_files(tmp_path / "home")


def test_download_from_a_closed_port(tmp_path):
    url = closed_port_url()
    with pytest.raises(DataError) as err:
        load_dataset(idx_cfg(download=True, url=url, allow_insecure_url=True))
    msg = str(err.value)
    assert f"{url}train-images-idx3-ubyte.gz" in msg and "refused" in msg.lower()
    assert "Downloading into" in msg and "failed" in msg
    assert not (tmp_path / "home").exists()  # the folders it made for the download are gone


# --------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_and_deterministic():
    ds = load_dataset(DigitsConfig())
    assert ds.source == "scikit-learn" and ds.class_names == [str(i) for i in range(10)]
    assert ds.image_shape == (8, 8, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert len(ds.x_train) + len(ds.x_test) == 1797
    per_class = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.round(per_class * 0.2))

    same = load_dataset(DigitsConfig())
    np.testing.assert_array_equal(same.x_train, ds.x_train)
    np.testing.assert_array_equal(same.y_test, ds.y_test)
    other = load_dataset(DigitsConfig(split_seed=1))
    assert not np.array_equal(other.y_train, ds.y_train)
    half = load_dataset(DigitsConfig(test_fraction=0.5))
    assert abs(len(half.x_test) - 1797 / 2) <= 10


def test_digits_from_a_partial_dictconfig_with_resize_and_rgb():
    cfg = OmegaConf.create({"name": "digits", "image_size": 16, "channels": 3, "max_test": 7})
    ds = load_dataset(cfg)
    assert ds.x_train.shape[1:] == (16, 16, 3) and ds.x_test.shape == (7, 16, 16, 3)
    assert (ds.x_train[..., 0] == ds.x_train[..., 2]).all()


# --------------------------------------------------------------------------- image folders


def folder_cfg(root: Path, **kwargs) -> DatasetConfig:
    kwargs.setdefault("image_size", None)  # native size (a run's default resizes to 64)
    return ImageFolderConfig(root=str(root), **kwargs)


def test_image_folder_grayscale_split(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"cat": 5, "ant": 4, "bee": 6})
    (root / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images
    ds = load_dataset(folder_cfg(root))
    assert ds.class_names == ["ant", "bee", "cat"] and ds.source == str(root)
    assert ds.image_shape == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 15
    for label in range(3):
        assert (ds.y_train == label).any() and (ds.y_test == label).any()
    # Every image carries the label of the folder it came from.
    for x, y in zip(
        np.concatenate([ds.x_train, ds.x_test]),
        np.concatenate([ds.y_train, ds.y_test]),
        strict=True,
    ):
        files = (root / ds.class_names[y]).glob("*.png")
        assert any(np.array_equal(np.asarray(Image.open(f)), x[..., 0]) for f in files)
    again = load_dataset(folder_cfg(root))
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_image_folder_colour(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    assert load_dataset(folder_cfg(root)).image_shape == (8, 8, 1)
    # An RGB file whose pixels are grey still counts as grayscale.
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=-1)
    write_image(root / "a" / "grey-rgb.png", grey)
    assert load_dataset(folder_cfg(root)).image_shape == (8, 8, 1)
    # One colour image makes the whole dataset RGB.
    write_image(root / "b" / "colour.png", np.full((8, 8, 3), [255, 0, 0], np.uint8))
    ds = load_dataset(folder_cfg(root))
    assert ds.image_shape == (8, 8, 3)
    assert load_dataset(folder_cfg(root, channels=1)).image_shape == (8, 8, 1)


def test_image_folder_forced_rgb_jpeg_and_upper_case_extensions(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2}, ext=".JPG")
    write_image_folder(root, {"b": 2}, ext=".jpeg", colour=True)
    ds = load_dataset(folder_cfg(root, channels=3))
    assert ds.image_shape == (8, 8, 3) and len(ds.x_train) + len(ds.x_test) == 4


def test_image_folder_sizes(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    write_image(root / "b" / "big.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=r"differ in size.*is 12x10.*dataset.image_size") as err:
        load_dataset(folder_cfg(root))
    assert str(root / "b" / "big.png") in str(err.value)
    assert load_dataset(folder_cfg(root, image_size=5)).image_shape == (5, 5, 1)


def test_image_folder_16_bit_png_is_scaled(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 1})
    write_image(root / "b" / "deep.png", np.full((8, 8), 257 * 100, np.uint16))
    ds = load_dataset(folder_cfg(root, test_fraction=0.01))
    x = np.concatenate([ds.x_train, ds.x_test])
    assert any((img == 100).all() for img in x)


def test_image_folder_train_and_test_folders(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root / "train", {"a": 3, "b": 2})
    write_image_folder(root / "test", {"a": 1, "b": 2}, seed=1)
    ds = load_dataset(folder_cfg(root))
    assert ds.class_names == ["a", "b"]
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1] and ds.y_test.tolist() == [0, 1, 1]

    write_image_folder(root / "test", {"c": 1})
    with pytest.raises(DataError, match=r"differ: only in train/: none; only in test/: \['c'\]"):
        load_dataset(folder_cfg(root))


def test_image_folder_train_without_test(tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"has train/ but no test/"):
        load_dataset(folder_cfg(tmp_path / "imgs"))


def test_image_folder_empty_root_and_missing_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match=r"imgs has no class sub-folders"):
        load_dataset(folder_cfg(tmp_path / "imgs"))
    with pytest.raises(DataError, match=r"dataset.root=.*nowhere does not exist"):
        load_dataset(folder_cfg(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"image_folder needs dataset.root"):
        load_dataset(ImageFolderConfig())


def test_image_folder_empty_class(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    (root / "c").mkdir()
    with pytest.raises(DataError, match="has no images") as err:
        load_dataset(folder_cfg(root))
    assert f"class folder {root / 'c'}" in str(err.value)


def test_image_folder_unreadable_image(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="cannot read image") as err:
        load_dataset(folder_cfg(root))
    assert str(root / "b" / "broken.png") in str(err.value)


@pytest.mark.parametrize("layout", ["split", "train/test"])
def test_image_folder_single_image_class(tmp_path, layout):
    root = tmp_path / "imgs"
    classes = root / "train" if layout == "train/test" else root
    write_image_folder(classes, {"a": 3, "solo": 1})
    if layout == "train/test":
        write_image_folder(root / "test", {"a": 1, "solo": 1})
    with pytest.raises(DataError, match=r"class 'solo' has only 1 image.*needs 2 images") as err:
        load_dataset(folder_cfg(root))
    assert str(classes / "solo") in str(err.value)


def test_image_folder_stray_files(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes.txt is not a supported image"):
        load_dataset(folder_cfg(root))
    (root / "a" / "notes.txt").unlink()
    write_image(root / "loose.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"holds images directly \(loose.png\)"):
        load_dataset(folder_cfg(root))


def test_image_folder_needs_two_classes(tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 3})
    with pytest.raises(DataError, match=r"only one class sub-folder \(a\)"):
        load_dataset(folder_cfg(tmp_path / "imgs"))


# --------------------------------------------------------------------------- limits and shapes


def test_max_train_and_max_test(tmp_path):
    folder = tmp_path / "fm"
    write_idx_folder(folder, n_train=40, n_test=20, sorted_labels=True)
    ds = load_dataset(idx_cfg(root=str(folder), max_train=10, max_test=3))
    assert len(ds.x_train) == len(ds.y_train) == 10 and len(ds.x_test) == 3
    assert len(np.unique(ds.y_train)) > 1  # shuffled first: a plain prefix is all class 0
    same = load_dataset(idx_cfg(root=str(folder), max_train=10, max_test=3))
    np.testing.assert_array_equal(same.x_train, ds.x_train)
    bigger = load_dataset(idx_cfg(root=str(folder), max_train=20))
    np.testing.assert_array_equal(bigger.y_train[:10], ds.y_train)  # a larger N extends it
    assert len(bigger.x_test) == 20
    everything = load_dataset(idx_cfg(root=str(folder), max_train=1000))
    assert len(everything.x_train) == 40


def test_idx_resize_and_channels(tmp_path):
    write_idx_folder(tmp_path / "fm")
    ds = load_dataset(idx_cfg(root=str(tmp_path / "fm"), image_size=12, channels=3))
    assert ds.x_train.shape == (20, 12, 12, 3) and ds.x_train.flags.c_contiguous


def test_rgb_to_gray_matches_pil():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    gray = data.adapt_images(rgb, None, 1)
    expected = np.stack([np.asarray(Image.fromarray(img).convert("L")) for img in rgb])
    np.testing.assert_array_equal(gray[..., 0], expected)


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DATASETS", REAL_FASHION.parent)
    ds = load_dataset(idx_cfg())
    assert ds.source == str(REAL_FASHION)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)


# --------------------------------------------------------------------------- unseen classes


def test_split_classes_pools_both_files_and_halves_the_classes(tmp_path):
    folder = tmp_path / "fm"
    arrays = write_idx_folder(folder, n_train=40, n_test=20)
    ds = load_dataset(idx_cfg(root=str(folder), split="classes"))
    assert sorted(set(ds.y_train)) == [0, 1, 2, 3, 4] and sorted(set(ds.y_test)) == [5, 6, 7, 8, 9]
    assert len(ds.x_train) + len(ds.x_test) == 60  # every image of both IDX files
    assert ds.class_names == FASHION_MNIST_CLASSES  # labels keep their names
    # Every image keeps its own label.
    x = np.concatenate([arrays["train_images"], arrays["test_images"]])
    y = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    for image, label in zip(ds.x_test[..., 0], ds.y_test, strict=True):
        assert label in y[(x == image).all(axis=(1, 2))]
    # A listed set, by name or id; max_test applies after the split.
    listed = load_dataset(
        idx_cfg(root=str(folder), split="classes", train_classes=["Bag", 0, "7"], max_test=5)
    )
    assert sorted(set(listed.y_train)) == [0, 7, 8] and len(listed.x_test) == 5
    assert not set(listed.y_test) & {0, 7, 8}


def test_split_classes_on_digits_and_its_errors():
    ds = load_dataset(DigitsConfig(split="classes"))
    assert sorted(set(ds.y_train)) == [0, 1, 2, 3, 4] and len(ds.y_train) + len(ds.y_test) == 1797
    with pytest.raises(ConfigError, match=r"leaves 1 class\(es\) for test"):
        load_dataset(DigitsConfig(split="classes", train_classes=list(range(9))))
    with pytest.raises(
        ConfigError, match=r"'cat', which is neither a class name nor a class id 0..9"
    ):
        load_dataset(DigitsConfig(split="classes", train_classes=["cat"]))
    with pytest.raises(ConfigError, match="add dataset.split=classes"):
        load_dataset(DigitsConfig(train_classes=[0, 1]))
    with pytest.raises(ConfigError, match="dataset.split='half' is not valid"):
        load_dataset(DigitsConfig(split="half"))


# --------------------------------------------------------------------------- streamed folders


def test_image_folder_streams_the_same_images(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 4, "b": 4, "c": 4}, colour=True)
    memory = load_dataset(folder_cfg(root, stream="false"))
    streamed = load_dataset(folder_cfg(root, stream="true"))
    assert streamed.streamed and not memory.streamed
    assert streamed.image_shape == memory.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(streamed.y_train, memory.y_train)
    np.testing.assert_array_equal(np.asarray(streamed.x_train), memory.x_train)
    np.testing.assert_array_equal(np.asarray(streamed.x_test), memory.x_test)
    # auto streams once the decoded images would pass STREAM_ABOVE_BYTES.
    assert not load_dataset(folder_cfg(root, image_size=8)).streamed
    images.STREAM_ABOVE_BYTES, before = 12 * 8 * 8 * 3 - 1, images.STREAM_ABOVE_BYTES
    try:
        auto = load_dataset(folder_cfg(root, image_size=8))
    finally:
        images.STREAM_ABOVE_BYTES = before
    assert auto.streamed and auto.image_shape == (8, 8, 3)


def test_streamed_folder_channels_sizes_and_bad_files(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 3, "b": 3})
    assert load_dataset(folder_cfg(root, stream="true")).image_shape == (8, 8, 1)
    write_image(root / "b" / "big.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=r"differ in size.*is 12x10.*dataset.image_size"):
        load_dataset(folder_cfg(root, stream="true"))
    ds = load_dataset(folder_cfg(root, stream="true", image_size=6, channels=3))
    assert ds.image_shape == (6, 6, 3) and ds.x_train[0].shape == (6, 6, 3)
    (root / "a" / "notes.jpg").write_text("shopping list")
    with pytest.raises(DataError, match=r"notes.jpg is not an image"):
        load_dataset(folder_cfg(root, stream="true", image_size=6))
    # Without the check, the first batch fails instead; the shape must then be given.
    unchecked = load_dataset(
        folder_cfg(root, stream="true", image_size=6, channels=1, verify=False)
    )
    assert len(unchecked.x_train) + len(unchecked.x_test) == 8
    with pytest.raises(ConfigError, match="dataset.verify=false .* needs dataset.image_size"):
        load_dataset(folder_cfg(root, stream="true", verify=False))
    with pytest.raises(ConfigError, match="dataset.stream='sometimes' is not valid"):
        load_dataset(folder_cfg(root, stream="sometimes"))
