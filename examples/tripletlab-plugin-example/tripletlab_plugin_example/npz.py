"""``dataset=npz``: a dataset layout, one ``root/data.npz`` holding ``x_train`` (uint8
[N, H, W] or [N, H, W, C]), ``y_train`` [N], ``x_test``, ``y_test`` and optionally
``class_names``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from tripletlab.data.base import DatasetSource
from tripletlab.errors import DataError
from tripletlab.options import setting
from tripletlab.options.dataset import DatasetConfig
from tripletlab.registry import Option


@dataclass
class NpzConfig(DatasetConfig):
    name: str = "npz"
    root: str = setting(MISSING, "the folder holding data.npz")


def _file(root: Any) -> Path:
    path = Path(str(root)).expanduser() / "data.npz"
    if not path.is_file():
        raise DataError(f"dataset=npz: {path} does not exist")
    return path


def load(cfg: Any) -> tuple:
    with np.load(_file(cfg.root)) as data:
        arrays = [np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")]
        labels = np.concatenate([arrays[1], arrays[3]])
        names = data["class_names"] if "class_names" in data else np.unique(labels)
    for i in (0, 2):
        if arrays[i].ndim == 3:
            arrays[i] = arrays[i][..., None]
    return (*arrays, [str(n) for n in names], str(_file(cfg.root)))


def ensure(root: Any, download: bool, url: Any, allow_insecure_url: bool) -> tuple:
    return _file(root).parent, "found in"


DATASET = Option("npz", NpzConfig, target=DatasetSource(load, ensure))
