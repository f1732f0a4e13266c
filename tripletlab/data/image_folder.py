"""``image_folder``: a user's own images, one sub-folder per class.

``dataset.root`` holds ``<class>/<image>`` (split per class by ``dataset.test_fraction``)
or ``train/<class>/<image>`` and ``test/<class>/<image>`` (the same classes in both).
Hidden files are skipped; anything else that is not an image, a nested folder, an empty
class or a class with a single training image is a DataError naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data.base import DatasetSource, option, root_path, stratified_split, stream_mode
from tripletlab.data.images import IMAGE_EXTENSIONS, images_from_files
from tripletlab.errors import DataError
from tripletlab.io_utils import escape_name, is_hidden
from tripletlab.registry import DATASETS

log = logging.getLogger(__name__)


def _class_folders(folder: Path) -> list[Path]:
    entries = sorted(p for p in folder.iterdir() if not is_hidden(p))
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        raise DataError(
            f"{folder} holds images directly ({images[0].name}"
            + (f" and {len(images) - 1} more" if len(images) > 1 else "")
            + f"): put each image in a sub-folder named after its class ({folder}/<class>/<image>)"
        )
    for p in entries:
        if not p.is_dir():
            log.warning("ignoring %s: not a class folder", p)
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise DataError(
            f"{folder} has no class sub-folders: image_folder needs one sub-folder per class "
            f"holding its images ({folder}/<class>/<image>.png)"
        )
    if len(classes) < 2:
        raise DataError(
            f"{folder} has only one class sub-folder ({classes[0].name}): a triplet needs a "
            "negative from another class, so add at least one more class"
        )
    return classes


def _class_images(class_dir: Path, min_images: int) -> list[Path]:
    images = []
    for p in sorted(class_dir.iterdir()):
        if is_hidden(p):
            continue
        if p.is_dir():
            raise DataError(
                f"{p} is a folder inside class folder {class_dir}: nested folders are not "
                "supported; move its images up or remove it"
            )
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{p} is not a supported image (extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                "convert it or move it out of the dataset"
            )
        images.append(p)
    if not images:
        raise DataError(
            f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
            "or remove the folder"
        )
    if len(images) < min_images:
        raise DataError(
            f"class {class_dir.name!r} has only {len(images)} image ({class_dir}): a triplet needs "
            f"{min_images} images of a class; add images or remove the folder"
        )
    return images


def _read_class_tree(class_dirs: list[Path], min_images: int) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _class_images(class_dir, min_images)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _require_root(root: Any) -> Path:
    folder = root_path(root)
    if folder is None:
        raise DataError("image_folder needs dataset.root: the folder with one sub-folder per class")
    if not folder.exists():
        raise DataError(f"dataset.root={folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"dataset.root={folder} is not a folder")
    return folder


def _load_image_folder(
    root: Path,
    channels: int | None,
    size: int | None,
    test_fraction: float,
    seed: int,
    stream: str = "false",
    verify: bool = True,
) -> tuple[Any, ...]:
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present, absent = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise DataError(
            f"{root} has {present.name}/ but no {absent.name}/: use both train/ and test/ "
            "(each with class sub-folders), or neither (class sub-folders directly in "
            f"{root}); if {present.name!r} is a class, rename it"
        )
    if train_dir.is_dir():
        for p in root.iterdir():
            if p.name not in ("train", "test") and not is_hidden(p):
                log.warning("ignoring %s: with train/ and test/ only those are read", p)
        train_classes, test_classes = _class_folders(train_dir), _class_folders(test_dir)
        train_names = [p.name for p in train_classes]
        test_names = [p.name for p in test_classes]
        if train_names != test_names:
            only_train = sorted(set(train_names) - set(test_names))
            only_test = sorted(set(test_names) - set(train_names))
            raise DataError(
                f"the class folders of {train_dir} and {test_dir} differ: only in train/: "
                f"{only_train or 'none'}; only in test/: {only_test or 'none'}; both need the "
                "same classes"
            )
        # Training needs 2 images of a class for a triplet; test only needs the class present.
        train_paths, y_train = _read_class_tree(train_classes, 2)
        test_paths, y_test = _read_class_tree(test_classes, 1)
        paths = train_paths + test_paths
        n_train = len(train_paths)
    else:
        classes = _class_folders(root)
        train_names = [p.name for p in classes]
        paths, labels = _read_class_tree(classes, 2)
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        paths = [paths[i] for i in train_idx] + [paths[i] for i in test_idx]
        y_train, y_test = labels[train_idx], labels[test_idx]
        n_train = len(train_idx)
    x_train, x_test = images_from_files(
        [paths[:n_train], paths[n_train:]], channels, size, stream, verify
    )
    # Class names are labels (plots, tables, the projector): a folder name's bytes that are
    # not UTF-8 as \xNN escapes.
    return x_train, y_train, x_test, y_test, [escape_name(n) for n in train_names]


def _image_folder_load(cfg: Any) -> tuple:
    folder = _require_root(option(cfg, "root"))
    size = option(cfg, "image_size")
    arrays = _load_image_folder(
        folder,
        option(cfg, "channels"),
        None if size is None else int(size),
        float(option(cfg, "test_fraction")),
        int(option(cfg, "split_seed")),
        stream_mode(cfg),
        bool(option(cfg, "verify")),
    )
    return (*arrays, str(folder.absolute()))


def _image_folder_ensure(root: Any, download: bool, url: str | None, *_: Any) -> tuple[Path, str]:
    # Nothing to download: only check that the user's folder is there.
    folder = _require_root(root)
    _class_folders(folder / "train" if (folder / "train").is_dir() else folder)
    return folder, "found in"


def _image_folder_fingerprint(cfg: Any) -> dict:
    from tripletlab.data.fingerprints import of_folder

    return of_folder(_require_root(option(cfg, "root")), IMAGE_EXTENSIONS)


DATASETS.register("image_folder")(
    DatasetSource(_image_folder_load, _image_folder_ensure, _image_folder_fingerprint)
)
