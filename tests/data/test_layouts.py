"""The benchmark layouts (cub200, cars196, sop, inshop) on tiny copies of their archives."""

from __future__ import annotations

import numpy as np
import pytest

import tripletlab
from tests.helpers import write_cars, write_cub, write_inshop, write_jpeg, write_sop
from tripletlab.data import fetch, load_dataset
from tripletlab.data.image_files import ImageFiles
from tripletlab.errors import ConfigError, DataError


def _load(name, root, *overrides):
    cfg = tripletlab.compose([f"dataset={name}", f"dataset.root={root}", *overrides])
    return load_dataset(cfg.dataset)


def test_cub200_trains_on_the_first_half_of_the_classes(tmp_path):
    folder = write_cub(tmp_path, classes=4, per_class=3)
    ds = _load("cub200", tmp_path, "dataset.image_size=16")  # the parent folder is found too
    assert ds.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3", "004.Bird_4"]
    assert sorted(set(ds.y_train)) == [0, 1] and sorted(set(ds.y_test)) == [2, 3]
    assert len(ds.x_train) == len(ds.x_test) == 6 and ds.x_gallery is None
    assert ds.image_shape == (16, 16, 3) and ds.source == str(folder)
    assert isinstance(ds.x_train, np.ndarray)  # tiny: auto keeps it in memory
    streamed = _load("cub200", folder, "dataset.image_size=16", "dataset.stream=true")
    assert isinstance(streamed.x_train, ImageFiles) and streamed.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(streamed.y_test, ds.y_test)
    assert all("/images/00" in p for p in streamed.x_train.paths)
    # Its classification split (train_test_split.txt): every class on both sides.
    original = _load("cub200", folder, "dataset.split=original", "dataset.image_size=16")
    assert len(original.x_test) == 4 and sorted(set(original.y_test)) == [0, 1, 2, 3]


def test_cub200_without_its_split_file_needs_split_classes(tmp_path):
    folder = write_cub(tmp_path, split_file=False)
    assert len(_load("cub200", folder, "dataset.image_size=16").x_test) == 6
    with pytest.raises(DataError, match="no train_test_split.txt.*use dataset.split=classes"):
        _load("cub200", folder, "dataset.split=original")


def test_cars196_reads_cars_annos_mat(tmp_path):
    write_cars(tmp_path, classes=4, per_class=3)
    ds = _load("cars196", tmp_path, "dataset.image_size=20")
    assert ds.class_names[0] == "Maker Model 1 2012" and len(ds.class_names) == 4
    assert sorted(set(ds.y_train)) == [0, 1] and sorted(set(ds.y_test)) == [2, 3]
    assert ds.image_shape == (20, 20, 3)
    original = _load("cars196", tmp_path, "dataset.split=original", "dataset.image_size=20")
    assert len(original.y_test) == 4  # the images flagged test=1


def test_sop_reads_its_train_and_test_files(tmp_path):
    folder = write_sop(tmp_path, train_classes=3, test_classes=2, per_class=2)
    ds = _load("sop", tmp_path, "dataset.image_size=8", "dataset.stream=true")
    assert sorted(set(ds.y_train)) == [0, 1, 2] and sorted(set(ds.y_test)) == [3, 4]
    assert ds.class_names[0] == "bicycle_final/111085122801"
    assert ds.x_test.paths[0] == str(folder / "chair_final" / "111085122804_0.JPG")


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "as-downloaded"])
def test_inshop_has_queries_and_a_gallery(tmp_path, nested):
    write_inshop(tmp_path, train_items=3, test_items=2, nested=nested)
    ds = _load("inshop", tmp_path, "dataset.image_size=8")
    assert len(ds.x_train) == 9 and len(ds.x_test) == 2 and len(ds.x_gallery) == 4
    assert ds.class_names[:2] == ["id_00000001", "id_00000002"]
    np.testing.assert_array_equal(ds.y_test, [3, 4])
    np.testing.assert_array_equal(ds.y_gallery, [3, 3, 4, 4])
    assert "gallery=4" in repr(ds)
    # split=classes pools queries, gallery and train, then splits by item.
    pooled = _load("inshop", tmp_path, "dataset.image_size=8", "dataset.split=classes")
    assert pooled.x_gallery is None and len(pooled.x_train) + len(pooled.x_test) == 15


def test_inshop_drops_single_image_training_items(tmp_path, caplog):
    root = write_inshop(tmp_path, train_items=3, test_items=2)
    listing = root / "list_eval_partition.txt"
    lines = listing.read_text().splitlines()
    # Item 1 keeps one training image: no triplet can use it.
    kept = [
        line
        for line in lines
        if not line.startswith("img/WOMEN/Dresses/id_00000001/0") or "01_1" in line
    ]
    listing.write_text("\n".join(kept) + "\n")
    ds = _load("inshop", root, "dataset.image_size=8")
    assert 0 not in ds.y_train and len(ds.x_train) == 6
    assert "leaving out 1 training classes with a single image" in caplog.text


@pytest.mark.parametrize(
    ("name", "writer", "expected"),
    [
        ("cub200", write_cub, "images.txt, image_class_labels.txt, classes.txt, images"),
        ("cars196", write_cars, "cars_annos.mat, car_ims"),
        ("sop", write_sop, "Ebay_train.txt, Ebay_test.txt"),
        ("inshop", write_inshop, "list_eval_partition.txt or Eval/list_eval_partition.txt"),
    ],
)
def test_a_missing_or_incomplete_folder_names_the_files_and_the_source(
    tmp_path, name, writer, expected
):
    from tripletlab.data.layouts import LAYOUTS

    layout = LAYOUTS[name]
    with pytest.raises(DataError) as err:
        _load(name, tmp_path)
    text = str(err.value)
    assert text.startswith(f"dataset.root={tmp_path} is not a {layout.title} folder: it lacks")
    assert expected in text and layout.url in text and layout.archive in text
    folder = writer(tmp_path / "data")
    # Remove one required file: named alone.
    first = layout.required[0].split("|")[0]
    (folder / first).unlink() if (folder / first).is_file() else None
    if name == "inshop":
        first = "list_eval_partition.txt or Eval/list_eval_partition.txt"
    with pytest.raises(DataError, match=f"it lacks {first}"):
        _load(name, folder)
    with pytest.raises(DataError, match="is not a folder"):
        _load(name, tmp_path / "nowhere")


def test_a_damaged_index_names_the_file_and_line(tmp_path):
    folder = write_cub(tmp_path)
    with (folder / "images.txt").open("a") as f:
        f.write("13 a b\n")
    with pytest.raises(DataError, match=r"images.txt, line 13: expected 2 fields"):
        _load("cub200", folder)
    folder = write_sop(tmp_path / "sop")
    text = (folder / "Ebay_train.txt").read_text().replace(" 2 2 ", " two 2 ", 1)
    (folder / "Ebay_train.txt").write_text(text)
    with pytest.raises(DataError, match=r"Ebay_train.txt, line 4: 'two' is not a number"):
        _load("sop", folder)
    (tmp_path / "cars").mkdir()
    (tmp_path / "cars" / "car_ims").mkdir()
    (tmp_path / "cars" / "cars_annos.mat").write_text("not a mat file")
    with pytest.raises(DataError, match=r"cannot read .*cars_annos.mat"):
        _load("cars196", tmp_path / "cars")


def test_a_corrupt_image_is_named_before_training(tmp_path):
    folder = write_cub(tmp_path)
    bad = next((folder / "images").glob("003.*/*.jpg"))
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=f"1 of 12 image file.*{bad.name} is truncated"):
        _load("cub200", folder, "dataset.stream=true")
    missing = next((folder / "images").glob("001.*/*.jpg"))
    missing.unlink()
    with pytest.raises(DataError, match=f"{missing.name} does not exist"):
        _load("cub200", folder, "dataset.stream=true")


def test_fetch_checks_a_layout_without_downloading(tmp_path):
    folder = write_sop(tmp_path)
    assert fetch("sop", tmp_path) == (folder, "found in")
    with pytest.raises(DataError, match="Stanford Online Products"):
        fetch("sop", tmp_path / "empty")


def test_train_classes_by_name(tmp_path):
    folder = write_cub(tmp_path, classes=5, per_class=2)
    ds = _load("cub200", folder, "dataset.image_size=8", "dataset.train_classes=[002.Bird_2,4,0]")
    assert sorted(set(ds.y_train)) == [0, 1, 4] and sorted(set(ds.y_test)) == [2, 3]
    with pytest.raises(ConfigError, match=r"'Heron', which is neither a class name nor"):
        _load("cub200", folder, "dataset.train_classes=[Heron,1]")


def test_jpeg_writer_sizes_vary(tmp_path):
    # The fixtures exercise resizing: their images do not share one size.
    write_jpeg(tmp_path / "a.jpg", 1, 0)
    write_jpeg(tmp_path / "b.jpg", 1, 1)
    from PIL import Image

    assert Image.open(tmp_path / "a.jpg").size != Image.open(tmp_path / "b.jpg").size
