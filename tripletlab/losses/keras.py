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
from tripletlab.losses import strategies

__all__ = [
    "DISTANCE_METRICS",
    "TripletBatchAllLoss",
    "TripletDistanceWeightedLoss",
    "TripletEasyPositiveLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
]

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
    """A mining strategy of :mod:`tripletlab.losses` as a Keras loss (a scalar per batch)."""

    strategy = ""  # the function's name in tripletlab.losses, without _triplet_loss

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
        super().__init__(name=name or f"triplet_{self.strategy}_loss", **kwargs)
        self.margin = float(margin)
        self.soft = bool(soft)
        self.distance_metric = distance_metric

    def call(self, y_true, y_pred):
        """y_true [B] or [B, 1] labels, y_pred [B, D] embeddings -> the loss, a scalar."""
        labels = tf.reshape(y_true, [-1])
        function = strategies.get(self.strategy)
        loss, _ = function(
            labels,
            y_pred,
            margin=self.margin,
            squared=self._squared,
            soft_margin=self.soft,
            jit_compile=_compiles(self.jit_compile),
            **self._options(),
        )
        return loss

    def _options(self) -> dict[str, Any]:
        """The strategy's own keyword arguments (none for the three classic ones)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "soft": self.soft,
            "distance_metric": self.distance_metric,
            "jit_compile": self.jit_compile,
        }


@keras.saving.register_keras_serializable(package="tripletlab")
class TripletSemiHardLoss(_TripletLoss):
    """Semi-hard mining (FaceNet): per positive pair, the nearest negative farther than the
    positive, else the farthest negative; the mean hinge over those pairs."""

    strategy = "semi_hard"


@keras.saving.register_keras_serializable(package="tripletlab")
class TripletHardLoss(_TripletLoss):
    """Batch-hard mining: per anchor, its farthest positive and nearest negative; the mean
    hinge (``soft=True``: softplus) over the anchors."""

    strategy = "batch_hard"


@keras.saving.register_keras_serializable(package="tripletlab")
class TripletBatchAllLoss(_TripletLoss):
    """Batch-all: every valid triplet; the mean of the positive hinges (``soft=True``: the
    mean softplus over all of them)."""

    strategy = "batch_all"


@keras.saving.register_keras_serializable(package="tripletlab")
class TripletEasyPositiveLoss(_TripletLoss):
    """Easy-positive (EPHN): per anchor, its nearest positive with the nearest negative
    farther than it (``negatives="semi_hard"``) or the nearest negative (``"hard"``)."""

    strategy = "easy_positive"

    def __init__(self, margin: float = 1.0, negatives: str = "semi_hard", **kwargs: Any):
        if negatives not in ("semi_hard", "hard"):
            raise ConfigError(f"negatives={negatives!r} is not valid; use 'semi_hard' or 'hard'")
        super().__init__(margin=margin, **kwargs)
        self.negatives = negatives

    def _options(self) -> dict[str, Any]:
        return {"negatives": self.negatives}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "negatives": self.negatives}


@keras.saving.register_keras_serializable(package="tripletlab")
class TripletDistanceWeightedLoss(_TripletLoss):
    """Distance-weighted sampling: per positive pair, one negative drawn with probability
    ∝ min(λ, 1/q(d)) (``cutoff``, ``nonzero_loss_cutoff`` as in pytorch-metric-learning).
    Needs L2-normalised embeddings (end the model with ``keras.layers.UnitNormalization``)
    and ``distance_metric="L2"``. Draws use TensorFlow's global seed."""

    strategy = "distance_weighted"

    def __init__(
        self,
        margin: float = 1.0,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        **kwargs: Any,
    ):
        if not 0 < float(cutoff) < float(nonzero_loss_cutoff) <= 2:
            raise ConfigError(
                f"cutoff={cutoff!r}, nonzero_loss_cutoff={nonzero_loss_cutoff!r} are not valid: "
                "they need 0 < cutoff < nonzero_loss_cutoff <= 2"
            )
        super().__init__(margin=margin, **kwargs)
        if self._squared:
            raise ConfigError("distance_metric='squared-L2' is not supported: the weights need L2")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def _options(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "cutoff": self.cutoff,
            "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
        }
