"""dataset.val_classes: validation classes drawn from the training classes, for tuning."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import write_idx_folder
from tripletlab.data import load_dataset
from tripletlab.errors import ConfigError
from tripletlab.options.dataset import DigitsConfig
from tripletlab.registry import schema_for


def _classes(ds) -> tuple[set[int], set[int]]:
    return set(ds.y_train.tolist()), set(ds.y_test.tolist())


def test_val_classes_come_from_the_training_classes_and_never_touch_the_test_classes():
    plain = load_dataset(DigitsConfig(split="classes"))
    train_all, test = _classes(plain)
    tuned = load_dataset(DigitsConfig(split="classes", val_classes=2))
    train, val = _classes(tuned)
    assert len(val) == 2 and val < train_all and train == train_all - val
    assert not (train | val) & test  # train, validation and test classes are disjoint
    # Every image of the training classes is in one of the two sides, none twice.
    assert len(tuned.y_train) + len(tuned.y_test) == len(plain.y_train)
    # Stable across runs: the same split_seed picks the same classes and images.
    again = load_dataset(DigitsConfig(split="classes", val_classes=2))
    np.testing.assert_array_equal(again.y_test, tuned.y_test)
    np.testing.assert_array_equal(again.x_train, tuned.x_train)
    # split_seed picks them: some seed picks another pair.
    picks = {
        tuple(
            sorted(
                _classes(load_dataset(DigitsConfig(split="classes", val_classes=2, split_seed=s)))[
                    1
                ]
            )
        )
        for s in range(6)
    }
    assert len(picks) > 1 and all(set(p) < train_all for p in picks)


def test_val_classes_on_idx_files_with_listed_training_classes(tmp_path):
    folder = tmp_path / "fm"
    write_idx_folder(folder, n_train=40, n_test=20)
    cfg = schema_for("dataset", "fashion_mnist")(
        root=str(folder), download=False, split="classes", train_classes=[0, 1, 2, 3, 7, 8]
    )
    ds = load_dataset(cfg)
    cfg.val_classes = 3
    tuned = load_dataset(cfg)
    train, val = _classes(tuned)
    assert len(val) == 3 and train | val == set(ds.y_train.tolist()) and not train & val


@pytest.mark.parametrize("n", [1, 4])
def test_val_classes_must_leave_two_classes_on_each_side(n):
    with pytest.raises(ConfigError, match=rf"dataset.val_classes={n} is not valid for 5 training"):
        load_dataset(DigitsConfig(split="classes", val_classes=n))


def test_val_classes_needs_split_classes():
    with pytest.raises(ConfigError, match="dataset.val_classes is set but dataset.split=original"):
        load_dataset(DigitsConfig(val_classes=2))
