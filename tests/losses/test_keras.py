"""tripletlab.losses.keras: the losses through model.compile / model.fit, saved and loaded."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tripletlab import losses
from tripletlab.errors import ConfigError
from tripletlab.losses.keras import (
    TripletBatchAllLoss,
    TripletDistanceWeightedLoss,
    TripletEasyPositiveLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
)

CLASSES = {
    "semi_hard": TripletSemiHardLoss,
    "batch_hard": TripletHardLoss,
    "batch_all": TripletBatchAllLoss,
}


def _batch(seed: int = 0, n: int = 24, dim: int = 5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    return labels, rng.normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("strategy", list(CLASSES))
@pytest.mark.parametrize(
    ("kwargs", "functional"),
    [
        ({}, {"margin": 1.0, "squared": False, "soft_margin": False}),
        (
            {"margin": 0.3, "distance_metric": "squared-L2"},
            {"margin": 0.3, "squared": True, "soft_margin": False},
        ),
        ({"soft": True}, {"margin": 1.0, "squared": False, "soft_margin": True}),
    ],
)
def test_each_class_equals_the_functional_loss(strategy, kwargs, functional):
    labels, emb = _batch()
    expected, _ = getattr(losses, f"{strategy}_triplet_loss")(labels, emb, **functional)
    loss = CLASSES[strategy](**kwargs)
    assert float(expected) > 0
    # Labels as Keras passes them: [B, 1] floats.
    got = loss(labels.reshape(-1, 1).astype(np.float32), emb)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss(labels, emb)) == pytest.approx(float(expected), rel=1e-6)


def test_tfa_names_and_defaults_and_clear_errors():
    loss = TripletHardLoss()
    assert loss.name == "triplet_batch_hard_loss"
    assert (loss.margin, loss.soft, loss.distance_metric) == (1.0, False, "L2")
    with pytest.raises(ConfigError, match="distance_metric='angular' is not supported"):
        TripletSemiHardLoss(distance_metric="angular")
    with pytest.raises(ConfigError, match="is not supported"):
        TripletBatchAllLoss(distance_metric=lambda a, b: a)
    with pytest.raises(ConfigError, match="margin=-1"):
        TripletHardLoss(margin=-1)


@pytest.mark.parametrize("cls", list(CLASSES.values()))
def test_config_round_trip(cls):
    loss = cls(margin=0.25, soft=True, distance_metric="squared-L2", name="mine")
    config = loss.get_config()
    assert config["margin"] == 0.25 and config["soft"] is True and config["name"] == "mine"
    again = cls.from_config(config)
    assert again.get_config() == config
    # Keras' own registry finds it by its registered name.
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is cls and restored.get_config() == config


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def _model(dim: int = 8):
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(dim),
            keras.layers.UnitNormalization(),
        ]
    )


@pytest.mark.parametrize("strategy", list(CLASSES))
def test_fit_on_digits_lowers_the_loss(strategy):
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CLASSES[strategy](margin=0.2))
    history = model.fit(x, y, batch_size=128, epochs=6, shuffle=True, verbose=0)
    curve = history.history["loss"]
    assert all(np.isfinite(curve))
    assert curve[-1] < 0.9 * curve[0], curve


def test_a_compiled_model_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _model()
    model.compile(optimizer="adam", loss=TripletHardLoss(margin=0.3, soft=True))
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered classes
    assert isinstance(loaded.loss, TripletHardLoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    before = model.evaluate(x[:128], y[:128], batch_size=128, verbose=0)
    after = loaded.evaluate(x[:128], y[:128], batch_size=128, verbose=0)
    assert after == pytest.approx(before, rel=1e-6)


def test_easy_positive_and_distance_weighted_classes():
    """Same value as the functions (distance-weighted: same global seed, same draws), their
    own keys round-trip, and a fit on digits lowers the loss."""
    import tensorflow as tf

    labels, emb = _batch()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    easy = TripletEasyPositiveLoss(margin=0.3, negatives="hard")
    want, _ = losses.easy_positive_triplet_loss(labels, emb, margin=0.3, negatives="hard")
    assert float(easy(labels, emb)) == pytest.approx(float(want), rel=1e-6)
    weighted = TripletDistanceWeightedLoss(margin=0.3, cutoff=0.6)
    tf.random.set_seed(3)
    got = float(weighted(labels, emb))
    tf.random.set_seed(3)
    want, _ = losses.distance_weighted_triplet_loss(labels, emb, margin=0.3, cutoff=0.6)
    assert got == pytest.approx(float(want), rel=1e-6)
    for loss in (easy, weighted):
        config = loss.get_config()
        assert type(loss).from_config(config).get_config() == config
    assert easy.get_config()["negatives"] == "hard" and weighted.get_config()["cutoff"] == 0.6
    with pytest.raises(ConfigError, match="negatives='easy'"):
        TripletEasyPositiveLoss(negatives="easy")
    with pytest.raises(ConfigError, match="not valid"):
        TripletDistanceWeightedLoss(cutoff=1.5)
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=TripletDistanceWeightedLoss(0.2))
    curve = model.fit(x, y, batch_size=128, epochs=4, verbose=0).history["loss"]
    assert all(np.isfinite(curve)) and curve[-1] < curve[0], curve
