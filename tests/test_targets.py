"""``_target_`` for one-off code (tripletlab.targets): model=custom, dataset=custom and
logger=custom call the user's callable with the arguments a registered option gets; a
wrong target, signature or return value is one ConfigError."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import tripletlab
from tripletlab.errors import ConfigError

USER_CODE = """
import numpy as np

def load(cfg):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(40, 6, 6, 1), dtype=np.uint8)
    y = np.arange(40) % 4
    return x[:30], y[:30], x[30:], y[30:], ["a", "b", "c", "d"]

def load_floats(cfg):
    x, y, xt, yt, names = load(cfg)
    return x.astype(np.float32), y, xt, yt, names

def no_arguments():
    return None

class Tracker:
    def __init__(self, logger_cfg, folder, config):
        self.rows = []
        self.path = folder.path / "mine.txt"

    def on_epoch_end(self, row):
        self.path.write_text(str(row["epoch"]))

def failing(logger_cfg, folder, config):
    raise OSError("disk full")

def backbone(x, cfg, reg):
    import keras
    return keras.layers.Flatten()(x)

def image_backbone(x, cfg, reg):
    return x
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_code.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_code"


def test_a_dataset_loader_target(user_module):
    from tripletlab.data import load_dataset

    cfg = tripletlab.compose(["dataset=custom", f"dataset._target_={user_module}.load"])
    data = load_dataset(cfg.dataset)
    assert data.x_train.shape == (30, 6, 6, 1) and data.class_names == ["a", "b", "c", "d"]
    assert data.source == "user_code.load"
    for target, message in [
        ("user_code.load_floats", r"the train split must be uint8 images \[N, H, W, C\]"),
        ("user_code.no_arguments", "must take 1 positional arguments"),
        ("user_code.missing", r"dataset._target_='user_code.missing' cannot be imported"),
        ("no_module.load", r"cannot be imported \(.*no_module"),
    ]:
        cfg = tripletlab.compose(["dataset=custom", f"dataset._target_={target}"])
        with pytest.raises(ConfigError, match=message):
            load_dataset(cfg.dataset)


def test_a_tracker_target(user_module, tmp_path):
    from tripletlab.run_folder import RunFolder
    from tripletlab.tracking import make_trackers
    from tripletlab.training.callbacks import Callbacks

    cfg = tripletlab.compose(
        ["dataset=digits", "logger=custom", f"logger._target_={user_module}.Tracker"]
    )
    (tracker,) = [t for t in make_trackers(cfg, RunFolder(tmp_path)) if not hasattr(t, "name")]
    callbacks = Callbacks()
    callbacks.extend([tracker], guarded=True)
    callbacks.on_train_begin()  # a hook the tracker lacks: skipped
    callbacks.on_epoch_end({"epoch": 3})
    assert (tmp_path / "mine.txt").read_text() == "3"


@pytest.mark.parametrize(
    "target, message",
    [
        ("no.such.module.fn", r"logger._target_='no.such.module.fn' cannot be imported"),
        ("user_code.missing", r"logger._target_='user_code.missing' cannot be imported"),
        ("user_code.no_arguments", r"logger._target_='user_code.no_arguments' must take 3 "),
        ("user_code.load", r"logger._target_='user_code.load' must take 3 "),
        # takes 3 arguments, but Hydra's instantiate refuses it (its blocklist): not a
        # warning and a run without its tracker
        ("os.chown", r"^logger._target_='os.chown' cannot be called: InstantiationException"),
    ],
)
def test_a_tracker_target_that_cannot_be_built_stops_the_run_at_its_start(
    user_module, tmp_path, target, message
):
    """Not a warning and a run without its tracker: one ConfigError before an epoch."""
    from tests.helpers import TINY, read_summary

    cfg = tripletlab.compose([*TINY, "logger=custom", f"logger._target_={target}"])
    with pytest.raises(ConfigError, match=message) as err:
        tripletlab.train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and summary["error"] == str(err.value)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_tracker_that_raises_while_built_is_a_warning(user_module, tmp_path, caplog):
    """Its own code failing is not a start-up mistake: the run goes on without it."""
    from tripletlab.run_folder import RunFolder
    from tripletlab.tracking import make_trackers

    cfg = tripletlab.compose(["logger=custom", f"logger._target_={user_module}.failing"])
    trackers = make_trackers(cfg, RunFolder(tmp_path))
    assert "custom tracker failed (OSError: disk full)" in caplog.text
    assert [type(t).__name__ for t in trackers] == ["TensorBoardTracker"]


def test_a_backbone_target(user_module):
    from tripletlab.models import build_model

    cfg = tripletlab.compose(["model=custom", f"model._target_={user_module}.backbone"])
    model = build_model(cfg.model, (6, 6, 1))
    emb = model(np.zeros((2, 6, 6, 1), np.float32)).numpy()
    assert emb.shape == (2, cfg.model.embedding_size)
    for target, message in [
        ("user_code.image_backbone", r"must return features \[B, F\]"),
        ("user_code.no_arguments", "must take 3 positional arguments"),
    ]:
        cfg = tripletlab.compose(["model=custom", f"model._target_={target}"])
        with pytest.raises(ConfigError, match=message):
            build_model(cfg.model, (6, 6, 1))
