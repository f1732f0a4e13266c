"""The triplet losses as Keras loss classes, for ``model.compile(loss=...)`` and ``model.fit``.

Drop-in replacements for tensorflow-addons' ``tfa.losses.TripletSemiHardLoss`` and
``TripletHardLoss`` (same argument names and defaults: ``margin=1.0``,
``distance_metric="L2"``; ``soft`` for the soft margin), plus ``TripletBatchAllLoss``, ``TripletEasyPositiveLoss`` and
``TripletDistanceWeightedLoss``::

    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))
    model.fit(images, labels, batch_size=64)

``jit_compile`` tells the loss whether Keras compiles the step with XLA (the mining engine
depends on it): pass what ``model.compile`` gets; the default follows Keras' own "auto"
(XLA when a GPU or TPU is visible).

``y_true`` holds the integer labels, [B] or [B, 1]; ``y_pred`` the embeddings, [B, D]. Each
call returns the functional loss of :mod:`tripletlab.losses` for the batch (the fraction it
also returns is dropped), so the value is the same as ``batch_hard_triplet_loss(labels,
embeddings, margin, squared, soft_margin)[0]``. A batch is mined as a whole: shuffle the
data (``fit`` does) and use batches large enough to hold positives, or a P x K sampler.

The classes are registered with Keras (package ``tripletlab``): ``get_config`` round-trips,
and a compiled model saved to ``.keras`` loads again once this module is imported.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tripletlab.errors import ConfigError
from tripletlab.losses.strategies import checked
from tripletlab.registry import STRATEGIES, Strategy

# tensorflow-addons' distance_metric names -> our ``squared`` flag. Its "angular" (cosine)
# distance and callables are not supported.
DISTANCE_METRICS = {"L2": False, "squared-L2": True}


def _squared(distance_metric: Any) -> bool:
    if isinstance(distance_metric, str) and distance_metric in DISTANCE_METRICS:
        return DISTANCE_METRICS[distance_metric]
    raise ConfigError(
        f"distance_metric={distance_metric!r} is not supported; use one of "
        f"{', '.join(map(repr, DISTANCE_METRICS))}. For a cosine distance, end the model with "
        "keras.layers.UnitNormalization(): on unit vectors squared L2 = 2 - 2 cos."
    )


def _compiles(jit_compile: bool | None) -> bool:
    """Whether the loss is compiled by XLA: as given, or (None) Keras' ``jit_compile="auto"``
    rule for TensorFlow, XLA whenever a device other than the CPU is visible. A wrong True
    only costs time (the XLA-safe engine); pass ``jit_compile=False`` to match
    ``model.compile(jit_compile=False)`` on a GPU."""
    if jit_compile is not None:
        return bool(jit_compile)
    return any(device.device_type != "CPU" for device in tf.config.list_physical_devices())


class _TripletLoss(keras.losses.Loss):
    """A mining strategy of :data:`~tripletlab.registry.STRATEGIES` as a Keras loss (a
    scalar per batch); its own keys (the schema's beyond margin, squared and soft_margin)
    are keyword arguments, checked as the config checks them."""

    strategy = ""  # its mining.strategy name
    own_defaults: dict[str, Any] = {}  # its own keys -> their defaults

    def __init__(
        self,
        margin: float = 1.0,
        soft: bool = False,
        distance_metric: str = "L2",
        name: str | None = None,
        jit_compile: bool | None = None,
        **kwargs: Any,
    ):
        self._squared = _squared(distance_metric)
        self.jit_compile = jit_compile
        if not soft and float(margin) < 0:
            raise ConfigError(f"margin={margin!r} is not valid; it must be >= 0")
        own = {k: kwargs.pop(k, v) for k, v in self.own_defaults.items()}
        # A zero margin is allowed here (as in tensorflow-addons), not in a config: the
        # schema's checks see 1.0 instead.
        self._check(float(margin) or 1.0, bool(soft), own)
        super().__init__(name=name or f"triplet_{self.strategy}_loss", **kwargs)
        self.margin = float(margin)
        self.soft = bool(soft)
        self.distance_metric = distance_metric
        self.own = own

    def _check(self, margin: float, soft: bool, own: dict[str, Any]) -> None:
        """The schema's checks on these arguments (``distance_metric`` for ``squared``)."""
        from tripletlab.config import check_node

        schema = STRATEGIES.schema(self.strategy)
        node = schema(
            strategy=self.strategy, margin=margin, squared=self._squared, soft_margin=soft, **own
        )
        try:
            check_node(node, schema, "", None)
        except ConfigError as err:  # name the argument, not the config key
            raise ConfigError(str(err).replace("mining.", "")) from None

    def call(self, y_true, y_pred):
        """y_true [B] or [B, 1] labels, y_pred [B, D] embeddings -> the loss, a scalar."""
        labels = tf.reshape(y_true, [-1])
        # checked: Keras would reduce a per-anchor loss [B] to its mean without a word
        loss, _ = checked(
            self.strategy,
            STRATEGIES.get(self.strategy)(
                labels,
                y_pred,
                margin=self.margin,
                squared=self._squared,
                soft_margin=self.soft,
                jit_compile=_compiles(self.jit_compile),
                **self.own,
            ),
        )
        return loss

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "soft": self.soft,
            "distance_metric": self.distance_metric,
            "jit_compile": self.jit_compile,
            **self.own,
        }


def class_name(entry: Strategy) -> str:
    """``TripletEasyPositiveLoss`` for easy_positive, unless the entry names its class."""
    return entry.class_name


def _loss_class(name: str) -> type:
    """The Keras loss class of strategy ``name``, registered with Keras (``tripletlab``)."""
    import dataclasses

    entry = STRATEGIES.option(name)
    schema = STRATEGIES.schema(name)
    own = {
        f.name: f.default for f in dataclasses.fields(schema) if f.name in STRATEGIES.own_keys(name)
    }
    function = STRATEGIES.get(name)
    summary = (function.__doc__ or f"The {name} strategy.").strip().split("\n\n")[0]
    extra = ""
    if entry.unit_vectors:
        extra = (
            "\n\nNeeds L2-normalised embeddings: end the model with "
            "``keras.layers.UnitNormalization``."
        )
    doc = f"{summary}{extra}\n\nKeyword arguments beyond margin, soft, distance_metric: {own}."
    cls = type(
        class_name(entry),
        (_TripletLoss,),
        {"strategy": name, "own_defaults": own, "__doc__": doc, "__module__": __name__},
    )
    return keras.saving.register_keras_serializable(package="tripletlab")(cls)


# One class per registered strategy (the package's and the installed plugins'), e.g.
# TripletSemiHardLoss, TripletHardLoss (batch_hard: tensorflow-addons' name).
CLASSES: dict[str, type] = {name: _loss_class(name) for name in STRATEGIES.registered()}
globals().update({cls.__name__: cls for cls in CLASSES.values()})
__all__ = ["CLASSES", "DISTANCE_METRICS", *sorted(cls.__name__ for cls in CLASSES.values())]
