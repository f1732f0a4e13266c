"""The dataset framework: what a source returns, how a dataset is loaded and split.

:func:`load_dataset` looks ``dataset.name`` up in :data:`tripletlab.registry.DATASETS`,
calls its :class:`DatasetSource`, then applies what every dataset shares: ``dataset.split``
(``classes``: :func:`split_by_classes`, the unseen-class protocol, and ``val_classes``:
:func:`hold_out_classes`, validation classes for tuning), ``max_train`` /
``max_test`` (a seeded random subset, :func:`_limit`), ``image_size`` and ``channels``.
:func:`fetch` makes sure a dataset's files are present (``tripletlab-fetch``).

The helpers sources share are public here: :func:`option` (a dataset key, or its schema's
default), :func:`root_path` (``dataset.root``), :func:`stream_mode` and
:func:`stratified_split`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data.image_files import ImageFiles
from tripletlab.data.images import adapt_images
from tripletlab.errors import ConfigError, TripletLabError
from tripletlab.options.dataset import DATASET_SPLITS, STREAM_CHOICES
from tripletlab.registry import DATASETS


@dataclass(repr=False)
class Dataset:
    """Train and test images (uint8 [N, H, W, C], or ImageFiles streamed from disk) with
    int64 labels indexing class_names.

    With a gallery (In-Shop's query/gallery protocol) the test split is the queries, ranked
    against ``x_gallery`` only; without one, each test image is ranked against the others.
    """

    name: str
    x_train: np.ndarray | ImageFiles
    y_train: np.ndarray
    x_test: np.ndarray | ImageFiles
    y_test: np.ndarray
    class_names: list[str]
    source: str  # where it was read from: a folder, "scikit-learn" or a URL
    x_gallery: np.ndarray | ImageFiles | None = None
    y_gallery: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        return isinstance(self.x_train, ImageFiles)

    def __repr__(self) -> str:
        # The default repr would print the arrays.
        gallery = "" if self.x_gallery is None else f", gallery={len(self.x_gallery)}"
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}"
            f"{gallery}, image_shape={self.image_shape}, classes={self.num_classes}, "
            f"streamed={self.streamed}, source={self.source!r})"
        )


@dataclass(frozen=True)
class DatasetSource:
    """One dataset's code, registered by name in :data:`tripletlab.registry.DATASETS`.

    ``load(cfg)`` -> (x_train, y_train, x_test, y_test, class_names, source): uint8 images
    [N, H, W, C] (or ImageFiles), int64 labels, and where they were read from; or a
    :class:`Dataset` (to give a gallery). :func:`load_dataset` then applies split,
    max_train / max_test, image_size and channels. ``ensure(root, download, url,
    allow_insecure_url)`` -> (folder, how it was found): makes sure the files are present
    (``tripletlab-fetch``). ``fingerprint(cfg)`` -> a small dict that identifies the files
    ``load`` reads, taken without decoding them (:mod:`.fingerprints`), or None while they
    are not there (to be downloaded).
    """

    load: Callable[[Any], tuple]
    ensure: Callable[[Any, bool, str | None, bool], tuple[Path, str]]
    fingerprint: Callable[[Any], dict | None] | None = None


_ABSENT = object()


def option(cfg: Any, key: str) -> Any:
    """``cfg.key``; a key that a hand-built cfg (a namespace) lacks takes the default of
    its dataset's schema (None where the schema has no such key)."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        value = getattr(cfg, key, _ABSENT)
    except MissingMandatoryValue:  # ``???``: not set
        return None
    if value is _ABSENT:
        from tripletlab.config import schema_default

        value = schema_default("dataset", getattr(cfg, "name", None), key)
    return None if isinstance(value, str) and value == "???" else value  # a schema's MISSING


def root_path(root: Any) -> Path | None:
    """``dataset.root`` as a path (``~`` and ``$VARS`` expanded), None when unset."""
    # Hydra users write `dataset.root=` for "unset", which arrives as "" or None.
    if root is None or str(root) == "":
        return None
    return Path(os.path.expandvars(str(root))).expanduser()


def stream_mode(cfg: Any) -> str:
    """``dataset.stream`` as auto, true or false (a YAML bool arrives as True/False)."""
    value = str(option(cfg, "stream") or "auto").lower()
    if value not in STREAM_CHOICES:
        raise ConfigError(
            f"dataset.stream={value!r} is not valid; choose one of: {', '.join(STREAM_CHOICES)}"
        )
    return value


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and test indices; every class (>= 2 items) keeps >= 1 item on each side."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(max(round(len(indices) * test_fraction), 1), len(indices) - 1)
        test.append(indices[:n_test])
        train.append(indices[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _limit(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stream: int) -> tuple:
    """Keep ``n`` images, picked by a shuffle (seeded by split_seed) so classes stay mixed."""
    if n is None or n >= len(x):
        return x, y
    keep = np.random.default_rng([seed, stream]).permutation(len(x))[:n]
    return x[keep], y[keep]


def load_dataset(cfg: Any) -> Dataset:
    """Load the dataset described by ``cfg`` (its option's schema, e.g. a DigitsConfig, or
    a DictConfig or namespace like one)."""
    name = str(getattr(cfg, "name", ""))
    source = DATASETS.get(name)  # ConfigError naming the valid names
    channels = option(cfg, "channels")
    size = option(cfg, "image_size")
    test_fraction = option(cfg, "test_fraction")
    if channels not in (None, 1, 3):
        raise ConfigError(f"dataset.channels={channels!r} is not valid; use 1, 3 or null")
    if size is not None and int(size) < 1:
        raise ConfigError(f"dataset.image_size={size!r} must be > 0")
    if test_fraction is not None and not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"dataset.test_fraction={test_fraction!r} must be between 0 and 1")
    size = None if size is None else int(size)
    seed = int(option(cfg, "split_seed"))
    split = str(option(cfg, "split") or "original")
    train_classes = option(cfg, "train_classes")
    val_classes = option(cfg, "val_classes")
    if split not in DATASET_SPLITS:
        raise ConfigError(
            f"dataset.split={split!r} is not valid; choose one of: {', '.join(DATASET_SPLITS)}"
        )
    for key, value in (("train_classes", train_classes), ("val_classes", val_classes)):
        if value is not None and split != "classes":
            raise ConfigError(
                f"dataset.{key} is set but dataset.split={split}: add dataset.split=classes"
            )
    loaded = source.load(cfg)
    if isinstance(loaded, Dataset):
        data = loaded
    else:
        x_train, y_train, x_test, y_test, class_names, where = loaded
        data = Dataset(name, x_train, y_train, x_test, y_test, list(class_names), where)
    data.name = name
    if split == "classes":
        split_by_classes(data, train_classes)
        if val_classes is not None:
            hold_out_classes(data, int(val_classes), seed)

    # Truncate before adapting so tiny runs do not resize images they then drop.
    x_train, y_train = _limit(data.x_train, data.y_train, option(cfg, "max_train"), seed, 1)
    x_test, y_test = _limit(data.x_test, data.y_test, option(cfg, "max_test"), seed, 2)

    def adapt(x):
        x = adapt_images(x, size, channels)
        return x if isinstance(x, ImageFiles) else np.ascontiguousarray(x)

    data.x_train, data.y_train = adapt(x_train), np.asarray(y_train, np.int64)
    data.x_test, data.y_test = adapt(x_test), np.asarray(y_test, np.int64)
    if data.x_gallery is not None:
        data.x_gallery = adapt(data.x_gallery)
        data.y_gallery = np.asarray(data.y_gallery, np.int64)
    return data


def fingerprint(cfg: Any) -> dict | None:
    """What identifies the data ``load_dataset(cfg)`` reads: ``{dataset, ...}`` from its
    source's ``fingerprint`` hook; None when that cannot tell yet (files missing, to be
    downloaded or reported by loading, or a source without a hook)."""
    name = str(getattr(cfg, "name", ""))
    source = DATASETS.get(name)
    if source.fingerprint is None:
        return None
    try:
        found = source.fingerprint(cfg)
    except (TripletLabError, OSError):  # loading reports it, with its own message
        return None
    return None if found is None else {"dataset": name, **found}


def _concatenate(parts: list[Any]) -> Any:
    if all(isinstance(p, ImageFiles) for p in parts):
        return ImageFiles.concatenate(parts)
    return np.concatenate([np.asarray(p) for p in parts])


def _class_ids(entries: Sequence[Any], class_names: Sequence[str]) -> np.ndarray:
    """``dataset.train_classes`` entries (class names or ids) -> ids into class_names."""
    ids = []
    for entry in entries:
        text = str(entry)
        if text in class_names:
            ids.append(list(class_names).index(text))
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
            ids.append(int(text))
        else:
            shown = ", ".join(repr(n) for n in list(class_names)[:12])
            more = ", ..." if len(class_names) > 12 else ""
            raise ConfigError(
                f"dataset.train_classes has {entry!r}, which is neither a class name nor a "
                f"class id 0..{len(class_names) - 1}; the classes: {shown}{more}"
            )
    return np.unique(np.asarray(ids, np.int64))


def split_by_classes(data: Dataset, train_classes: Sequence[Any] | None = None) -> None:
    """The unseen-class protocol, in place: pool every split (gallery too), train on the
    first half of the classes present (sorted by id) or on ``train_classes``, test on the
    others. Labels keep their ids, so class_names still name them."""
    xs = [data.x_train, data.x_test]
    ys = [data.y_train, data.y_test]
    if data.x_gallery is not None:
        xs.append(data.x_gallery)
        ys.append(data.y_gallery)
    x, y = _concatenate(xs), np.concatenate([np.asarray(v, np.int64) for v in ys])
    present = np.unique(y)
    if train_classes is None:
        chosen = present[: len(present) // 2]
    else:
        chosen = _class_ids(train_classes, data.class_names)
        absent = np.setdiff1d(chosen, present)
        if len(absent):
            raise ConfigError(
                f"dataset.train_classes names classes without images: "
                f"{[data.class_names[i] for i in absent]}"
            )
    test_classes = np.setdiff1d(present, chosen)
    for side, classes in (("training", chosen), ("test", test_classes)):
        if len(classes) < 2:
            raise ConfigError(
                f"dataset.split=classes leaves {len(classes)} class(es) for {side} "
                f"({len(present)} classes in all): each side needs at least 2; "
                "change dataset.train_classes"
            )
    mask = np.isin(y, chosen)
    data.x_train, data.y_train = x[mask], y[mask]
    data.x_test, data.y_test = x[~mask], y[~mask]
    data.x_gallery = data.y_gallery = None


def hold_out_classes(data: Dataset, n: int, seed: int) -> None:
    """Tuning on validation classes, in place, after :func:`split_by_classes`: ``n`` of the
    training classes (picked by ``seed``, the same ones on every run) become the test split;
    training keeps the others, and the test classes are dropped (never seen while tuning)."""
    present = np.unique(np.asarray(data.y_train, np.int64))  # sorted: stable picks
    if not 2 <= n <= len(present) - 2:
        raise ConfigError(
            f"dataset.val_classes={n} is not valid for {len(present)} training classes: "
            f"it must be between 2 and {len(present) - 2} (each side needs at least 2)"
        )
    val = np.sort(np.random.default_rng([seed, 3]).choice(present, n, replace=False))
    mask = np.isin(data.y_train, val)
    x = data.x_train
    data.x_test, data.y_test = x[mask], data.y_train[mask]
    data.x_train, data.y_train = x[~mask], data.y_train[~mask]


def fetch(
    name: str,
    root: Any = None,
    download: bool = True,
    url: str | None = None,
    allow_insecure_url: bool = False,
) -> tuple[Path, str]:
    """Make sure dataset ``name``'s files are present and readable (``tripletlab-fetch``).

    Returns the folder and how it was found ("found in", "downloaded from URL to"...).
    Raises DataError when the files are missing (and not downloaded) or corrupt, ConfigError
    for an http:// or file:// URL without ``allow_insecure_url``.
    """
    return _ensure(name, root, download, url, allow_insecure_url)


def ensure_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    url: str | None = None,
    allow_insecure_url: bool = False,
) -> Path:
    """Make sure ``name``'s files are present (downloading if allowed) and readable."""
    return _ensure(name, root, download, url, allow_insecure_url)[0]


def _ensure(
    name: str, root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
) -> tuple[Path, str]:
    return DATASETS.get(name).ensure(root, download, url, allow_insecure_url)
