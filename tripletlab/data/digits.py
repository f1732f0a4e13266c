"""scikit-learn's 8x8 digits (1,797 images, 10 classes): an offline run in seconds.

Split per class by ``dataset.test_fraction`` and ``dataset.split_seed``; the pixel values
0..16 are scaled to 0..255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data.base import DatasetSource, option, stratified_split
from tripletlab.data.idx import DIGIT_CLASSES
from tripletlab.errors import DataError
from tripletlab.registry import DATASETS


def _import_sklearn_datasets() -> Any:
    # Imported on demand: scikit-learn is slow to import and only digits needs it.
    try:
        import sklearn.datasets
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    return sklearn.datasets


def _load_digits(test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    digits = _import_sklearn_datasets().load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    return images[train], labels[train], images[test], labels[test]


def _digits_load(cfg: Any) -> tuple:
    arrays = _load_digits(float(option(cfg, "test_fraction")), int(option(cfg, "split_seed")))
    return (*arrays, list(DIGIT_CLASSES), "scikit-learn")


def _digits_ensure(root: Any, download: bool, url: str | None, *_: Any) -> tuple[Path, str]:
    sklearn_datasets = _import_sklearn_datasets()
    return Path(sklearn_datasets.__file__).parent / "data", "bundled with scikit-learn in"


def _digits_fingerprint(cfg: Any) -> dict:
    """The file scikit-learn generates the images from (the split is the config's)."""
    from tripletlab.data.fingerprints import of_bundled_file

    return of_bundled_file(_digits_ensure(None, False, None)[0] / "digits.csv.gz")


DATASETS.register("digits")(DatasetSource(_digits_load, _digits_ensure, _digits_fingerprint))
