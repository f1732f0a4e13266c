"""The metric-learning benchmarks, read in the layout their authors publish them in.

===========  ==================================================  ==============================
name         files under ``dataset.root``                        standard protocol
===========  ==================================================  ==============================
``cub200``   images.txt, image_class_labels.txt, classes.txt,    classes 1-100 train,
             images/ (CUB_200_2011.tgz)                          101-200 test (split=classes)
``cars196``  cars_annos.mat, car_ims/ (car_ims.tgz)              classes 1-98 train,
                                                                 99-196 test (split=classes)
``sop``      Ebay_train.txt, Ebay_test.txt and the class         its train/test files
             folders (Stanford_Online_Products.zip)              (split=original)
``inshop``   list_eval_partition.txt (or Eval/...), img/ (or     train; query vs gallery
             Img/img/) (DeepFashion In-shop Clothes Retrieval)   (split=original)
===========  ==================================================  ==============================

``dataset.root`` is the unpacked folder or the folder holding it (``CUB_200_2011``...).
Nothing is downloaded: a missing or incomplete folder gets one message naming the files
expected and where the dataset is published. ``split=original`` is each dataset's own
split (CUB's train_test_split.txt, Cars' ``test`` flag); ``split=classes`` the unseen-class
one (:func:`tripletlab.data.base.split_by_classes`). Images are streamed from disk when decoding
them would not fit (``dataset.stream=auto``), see :mod:`tripletlab.data.images`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data.base import Dataset, DatasetSource, option, root_path, stream_mode
from tripletlab.data.images import IMAGE_EXTENSIONS, images_from_files
from tripletlab.errors import DataError
from tripletlab.registry import DATASETS

log = logging.getLogger(__name__)


@dataclass
class Index:
    """A dataset's files and labels per split (train, test and maybe gallery)."""

    paths: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    class_names: list[str]


@dataclass(frozen=True)
class Layout:
    """One benchmark: how to recognise its folder and read its index."""

    name: str
    title: str
    url: str
    folder: str  # the folder its archive unpacks to (searched under dataset.root)
    required: tuple[str, ...]  # files or folders that must be there (alternatives: "a|b")
    archive: str  # what to download, for the message
    read: Callable[[Path], Index] = field(compare=False)

    def missing(self, folder: Path) -> list[str]:
        return [
            entry
            for entry in self.required
            if not any((folder / alt).exists() for alt in entry.split("|"))
        ]

    def locate(self, root: Any) -> Path:
        """The dataset's folder: ``root`` or ``root/<folder>``; else one message saying
        what is missing and where the dataset is published."""
        given = root_path(root)
        expected = ", ".join(e.replace("|", " or ") for e in self.required)
        how = (
            f"{self.name} reads {self.title} as published at {self.url} ({self.archive}): "
            f"{expected}; unpack it and set dataset.root to the folder holding them "
            f"(usually {self.folder})"
        )
        if given is None:
            raise DataError(f"dataset.root is not set; {how}")
        if not given.is_dir():
            raise DataError(f"dataset.root={given} is not a folder; {how}")
        for folder in (given, given / self.folder):
            if folder.is_dir() and not self.missing(folder):
                return folder
        lacks = ", ".join(m.replace("|", " or ") for m in self.missing(given))
        raise DataError(
            f"dataset.root={given} is not a {self.title} folder: it lacks {lacks} (and "
            f"has no complete {self.folder}/ inside); {how}"
        )


# --------------------------------------------------------------------------- file readers


def _rows(path: Path, columns: int, what: str, skip: int = 0) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line after ``skip``; each has ``columns``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise DataError(
                f"{path}, line {number}: expected {columns} fields ({what}), found "
                f"{len(fields)}: {line[:100]!r}; the file is damaged: unpack it again"
            )
        rows.append((number, fields))
    if not rows:
        raise DataError(f"{path} lists nothing ({what} expected): unpack it again")
    return rows


def _int(path: Path, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(
            f"{path}, line {number}: {text!r} is not a number; the file is damaged"
        ) from None


def _id_table(path: Path, what: str) -> dict[int, str]:
    """``<id> <value>`` lines (CUB's files) -> {id: value}."""
    table: dict[int, str] = {}
    for number, (key, value) in _rows(path, 2, what):
        table[_int(path, number, key)] = value
    return table


def _labels_from_ids(ids: list[int], where: str) -> tuple[np.ndarray, list[int]]:
    """1-based class ids -> 0-based labels, and the sorted ids."""
    known = sorted(set(ids))
    position = {c: i for i, c in enumerate(known)}
    if len(known) < 2:
        raise DataError(f"{where} lists {len(known)} class: a triplet needs at least two")
    return np.array([position[c] for c in ids], np.int64), known


def _read_cub(folder: Path) -> Index:
    images = _id_table(folder / "images.txt", "<image_id> <image_name>")
    labels = _id_table(folder / "image_class_labels.txt", "<image_id> <class_id>")
    classes = _id_table(folder / "classes.txt", "<class_id> <class_name>")
    if set(images) != set(labels):
        only = sorted(set(images) ^ set(labels))[:5]
        raise DataError(
            f"{folder}/images.txt and image_class_labels.txt list different image ids "
            f"(e.g. {only}); both must come from the same CUB_200_2011 archive"
        )
    ids = sorted(images)
    class_ids = [int(labels[i]) for i in ids]
    unknown = sorted(set(class_ids) - set(classes))
    if unknown:
        raise DataError(
            f"{folder}/image_class_labels.txt uses class ids {unknown[:5]} that "
            "classes.txt does not list"
        )
    label, known = _labels_from_ids(class_ids, f"{folder}/image_class_labels.txt")
    paths = [folder / "images" / images[i] for i in ids]
    # split=original: the classification split of train_test_split.txt (1 = train).
    split_file = folder / "train_test_split.txt"
    if split_file.is_file():
        flags = _id_table(split_file, "<image_id> <is_training_image>")
        is_train = np.array([flags.get(i) == "1" for i in ids])
    else:
        is_train = np.ones(len(ids), bool)  # only split=classes can then make a test split
    return _index(paths, label, is_train, [classes[c] for c in known])


def _index(paths: list[Path], labels: np.ndarray, is_train: np.ndarray, names: list[str]) -> Index:
    train = np.flatnonzero(is_train)
    test = np.flatnonzero(~is_train)
    return Index(
        {"train": [paths[i] for i in train], "test": [paths[i] for i in test]},
        {"train": labels[train], "test": labels[test]},
        names,
    )


def _read_cars(folder: Path) -> Index:
    mat = folder / "cars_annos.mat"
    try:
        import scipy.io
    except ImportError:
        raise DataError("cars196 reads cars_annos.mat with scipy: pip install scipy") from None
    try:
        content = scipy.io.loadmat(str(mat), squeeze_me=True)
        annotations = np.atleast_1d(content["annotations"])
        rel_paths = [str(p) for p in annotations["relative_im_path"]]
        class_ids = [int(c) for c in annotations["class"]]
        is_test = np.array([int(t) for t in annotations["test"]]) == 1
        names = [str(n) for n in np.atleast_1d(content["class_names"])]
    except DataError:
        raise
    except Exception as exc:  # a damaged .mat: ValueError, KeyError, ...
        raise DataError(
            f"cannot read {mat}: {type(exc).__name__}: {exc}; it should hold 'annotations' "
            "(relative_im_path, class, test) and 'class_names': download it again"
        ) from None
    label, known = _labels_from_ids(class_ids, str(mat))
    if known[-1] > len(names):
        raise DataError(f"{mat} uses class {known[-1]} but names {len(names)} classes")
    paths = [folder / p for p in rel_paths]
    return _index(paths, label, ~is_test, [names[c - 1] for c in known])


def _read_sop_file(path: Path) -> tuple[list[str], list[int]]:
    rows = _rows(path, 4, "image_id class_id super_class_id path", skip=1)
    return [r[3] for _, r in rows], [_int(path, n, r[1]) for n, r in rows]


def _read_sop(folder: Path) -> Index:
    train_files, train_ids = _read_sop_file(folder / "Ebay_train.txt")
    test_files, test_ids = _read_sop_file(folder / "Ebay_test.txt")
    label, known = _labels_from_ids(train_ids + test_ids, f"{folder}/Ebay_*.txt")
    # A product's name: its category folder and the id its image names start with.
    names: dict[int, str] = {}
    for file, cid in zip(train_files + test_files, train_ids + test_ids, strict=True):
        names.setdefault(cid, file.rsplit("_", 1)[0])
    n = len(train_files)
    return Index(
        {
            "train": [folder / f for f in train_files],
            "test": [folder / f for f in test_files],
        },
        {"train": label[:n], "test": label[n:]},
        [names[c] for c in known],
    )


def _read_inshop(folder: Path) -> Index:
    listing = folder / "list_eval_partition.txt"
    if not listing.is_file():
        listing = folder / "Eval" / "list_eval_partition.txt"
    rows = _rows(listing, 3, "image_name item_id evaluation_status", skip=2)
    base = folder if (folder / "img").is_dir() else folder / "Img"
    items = sorted({r[1] for _, r in rows})
    position = {item: i for i, item in enumerate(items)}
    paths: dict[str, list[Path]] = {"train": [], "test": [], "gallery": []}
    labels: dict[str, list[int]] = {"train": [], "test": [], "gallery": []}
    for number, (image, item, status) in rows:
        split = {"train": "train", "query": "test", "gallery": "gallery"}.get(status)
        if split is None:
            raise DataError(
                f"{listing}, line {number}: status {status!r} is not train, query or gallery"
            )
        paths[split].append(base / image)
        labels[split].append(position[item])
    for split, what in (("train", "train"), ("test", "query"), ("gallery", "gallery")):
        if not paths[split]:
            raise DataError(f"{listing} lists no {what} image; the file is damaged")
    return Index(paths, {k: np.array(v, np.int64) for k, v in labels.items()}, items)


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout(
            "cub200",
            "CUB-200-2011",
            "https://www.vision.caltech.edu/datasets/cub_200_2011/",
            "CUB_200_2011",
            ("images.txt", "image_class_labels.txt", "classes.txt", "images"),
            "CUB_200_2011.tgz",
            _read_cub,
        ),
        Layout(
            "cars196",
            "Cars196 (Stanford Cars)",
            "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
            "cars196",
            ("cars_annos.mat", "car_ims"),
            "car_ims.tgz and cars_annos.mat",
            _read_cars,
        ),
        Layout(
            "sop",
            "Stanford Online Products",
            "https://cvgl.stanford.edu/projects/lifted_struct/",
            "Stanford_Online_Products",
            ("Ebay_train.txt", "Ebay_test.txt"),
            "Stanford_Online_Products.zip",
            _read_sop,
        ),
        Layout(
            "inshop",
            "DeepFashion In-shop Clothes Retrieval",
            "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
            "In-shop Clothes Retrieval Benchmark",
            ("list_eval_partition.txt|Eval/list_eval_partition.txt", "img|Img/img"),
            "Eval/list_eval_partition.txt and Img/img.zip",
            _read_inshop,
        ),
    )
}


# --------------------------------------------------------------------------- sources


def _drop_single_image_classes(index: Index, name: str) -> None:
    """A published training split may hold items with one image, which no triplet can use;
    they are dropped (and counted in the log) since the user cannot fix the archive."""
    labels = index.labels["train"]
    classes, counts = np.unique(labels, return_counts=True)
    lonely = classes[counts < 2]
    if len(lonely):
        keep = ~np.isin(labels, lonely)
        log.warning(
            "%s: leaving out %d training classes with a single image (a triplet needs two)",
            name,
            len(lonely),
        )
        index.paths["train"] = [p for p, k in zip(index.paths["train"], keep, strict=True) if k]
        index.labels["train"] = labels[keep]


def _layout_source(layout: Layout) -> DatasetSource:
    def load(cfg: Any) -> Dataset:
        folder = layout.locate(option(cfg, "root"))
        index = layout.read(folder)
        if str(option(cfg, "split")) == "original":
            _drop_single_image_classes(index, layout.name)
            if not index.paths["test"]:
                raise DataError(
                    f"{folder} has no train_test_split.txt, so {layout.name} has no test split "
                    "with dataset.split=original; use dataset.split=classes"
                )
        splits = [s for s in ("train", "test", "gallery") if s in index.paths]
        size = option(cfg, "image_size")
        images = images_from_files(
            [index.paths[s] for s in splits],
            option(cfg, "channels"),
            None if size is None else int(size),
            stream_mode(cfg),
            bool(option(cfg, "verify")),
        )
        x = dict(zip(splits, images, strict=True))
        return Dataset(
            layout.name,
            x["train"],
            index.labels["train"],
            x["test"],
            index.labels["test"],
            index.class_names,
            str(folder.absolute()),
            x_gallery=x.get("gallery"),
            y_gallery=index.labels.get("gallery"),
        )

    def ensure(root: Any, download: bool, url: str | None, *_: Any) -> tuple[Path, str]:
        # Nothing can be downloaded (the archives need a licence or a form): check the folder.
        folder = layout.locate(root)
        layout.read(folder)
        return folder, "found in"

    def fingerprint(cfg: Any) -> dict:
        from tripletlab.data.fingerprints import of_folder

        # The images and the listings that say which image is which class and split.
        return of_folder(layout.locate(option(cfg, "root")), {*IMAGE_EXTENSIONS, ".txt", ".mat"})

    return DatasetSource(load, ensure, fingerprint)


for _layout in LAYOUTS.values():
    DATASETS.register(_layout.name)(_layout_source(_layout))
