"""Embedding backbones (Keras 3 functional models).

Unlike the seed, ``embedding_size`` is honoured and the embedding has no ReLU (a ReLU would
confine it to the positive orthant). L2 normalisation is optional. The last layers run in
float32 under mixed precision, so the embedding the loss sees is always float32.

A backbone is a function ``(images, cfg, reg) -> features``: Keras tensors [B, H, W, C] ->
[B, F], with ``cfg`` the model node (``cfg.num_channels``...) and ``reg`` the kernel
regulariser (or None) for its layers. Adding one is that function, registered with
``@BACKBONES.register("name")`` (:mod:`tripletlab.registry`), plus ``conf/model/name.yaml``;
:func:`build_model` adds the embedding head.

The pretrained backbones (``resnet50``, ``efficientnetv2_b0``, ``mobilenetv3_small``) are
keras.applications models without their classifier, after a layer doing the application's
own input preprocessing; ``model.weights`` is imagenet (the file Keras keeps in
``~/.keras/models/``), none, or a ``.weights.h5`` file; ``model.freeze_batch_norm`` keeps
their batch norm layers in inference mode with ImageNet's statistics. Under a ``tf.distribute`` distribution with
several replicas, every trainable batch norm (theirs, and :class:`FusedBatchNorm` in
``small_cnn`` and ``vgg_gap``) is synchronised: the global batch's moments, so N replicas
compute what one device computes on the global batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers

from tripletlab.errors import ConfigError, DataError
from tripletlab.registry import BACKBONES


@keras.saving.register_keras_serializable(package="tripletlab")
class FusedBatchNorm(layers.Layer):
    """Batch normalisation over the channels of NHWC images with TensorFlow's fused kernel.

    Same maths and defaults as ``keras.layers.BatchNormalization`` (momentum 0.99,
    epsilon 1e-3), but Keras 3 computes moments and normalisation as separate ops, which made
    the small CNN's train step twice as slow on CPU; ``FusedBatchNormV3`` does one pass
    forward and one backward (oneDNN on CPU, cuDNN on GPU).

    ``synchronized`` (default): in training under a ``tf.distribute`` distribution with
    several replicas, the moments are the global batch's: one all-gather per layer brings each
    replica's per-channel count, mean and sum of squared deviations, so the outputs, gradients and
    moving statistics are a single device's on the global batch (plain ops there, not the
    fused kernel, whose gradient ignores moments given to it). One replica, or inference:
    the fused kernel alone, unchanged.
    """

    def __init__(
        self, momentum: float = 0.99, epsilon: float = 1e-3, synchronized: bool = True, **kwargs
    ):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        # "mean": under tf.distribute each replica's update is averaged, so the replicas'
        # copies stay equal (with "none" they would silently drift apart).
        self.moving_mean = self.add_weight(
            shape=channels,
            initializer="zeros",
            trainable=False,
            name="moving_mean",
            aggregation="mean",
        )
        self.moving_variance = self.add_weight(
            shape=channels,
            initializer="ones",
            trainable=False,
            name="moving_variance",
            aggregation="mean",
        )

    def call(self, x, training=False):
        import tensorflow as tf

        gamma, beta = tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32")
        if training:
            context = tf.distribute.get_replica_context()
            if self.synchronized and context is not None and context.num_replicas_in_sync > 1:
                y, mean, variance = self._global_batch_norm(x, gamma, beta, context)
            else:
                y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                    x, gamma, beta, epsilon=self.epsilon, is_training=True
                )
            decay = 1.0 - self.momentum
            self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x,
            gamma,
            beta,
            # Under mixed precision Keras autocasts variables read in call(); the fused
            # kernel wants float32 statistics whatever the input's dtype.
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon,
            is_training=False,
        )
        return y

    def _global_batch_norm(self, x, gamma, beta, context):
        """Training-mode batch norm with the global batch's moments, from inside a replica:
        (y like x, mean, unbiased variance) as the fused kernel returns them.

        Each replica takes its slice's count, mean and sum of squared deviations (two
        passes, as the fused kernel does); one all-gather per layer brings every replica's
        and each combines them the same way (Chan et al.'s parallel variance). Sums of
        squares combined as E[x^2] - E[x]^2 lost the variance to cancellation when a
        channel's mean is large against its spread (inputs near 100 with a spread of 0.01:
        moving statistics off by 1.1 after 3 steps, tests/test_attack_replicas.py).
        """
        import tensorflow as tf

        x32 = tf.cast(x, "float32")
        axes = [0, 1, 2]
        count = tf.cast(tf.reduce_prod(tf.shape(x32)[:-1]), "float32")
        local_mean = tf.reduce_mean(x32, axes)
        local_m2 = tf.reduce_sum(tf.square(x32 - local_mean), axes)
        local = tf.concat([count[None], local_mean, local_m2], 0)[None]  # [1, 1 + 2C]
        parts = context.all_gather(local, axis=0)  # [replicas, 1 + 2C]: one per layer
        channels = tf.shape(x32)[-1]
        counts, means, m2s = parts[:, :1], parts[:, 1 : 1 + channels], parts[:, 1 + channels :]
        n = tf.reduce_sum(counts)
        mean = tf.reduce_sum(counts * means, 0) / n
        m2 = tf.reduce_sum(m2s, 0) + tf.reduce_sum(counts * tf.square(means - mean), 0)
        variance = m2 / n
        scale = gamma * tf.math.rsqrt(variance + self.epsilon)
        y = (x32 - mean) * scale + beta
        # The fused kernel's batch variance is the unbiased one (the moving statistic's).
        unbiased = m2 / tf.maximum(n - 1.0, 1.0)
        return tf.cast(y, x.dtype), mean, unbiased

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        }


def synchronizes_batch_norm(model: keras.Model) -> bool:
    """Whether ``model`` has a trainable batch norm whose training step gathers the global
    batch's moments across replicas (a FusedBatchNorm, or a synchronised Keras one)."""
    for layer in model._flatten_layers(include_self=False):
        syncing = isinstance(layer, (FusedBatchNorm, layers.BatchNormalization))
        if syncing and layer.trainable and getattr(layer, "synchronized", False):
            return True
    return False


def _conv(filters: int, kernel: int, reg, use_bias: bool = True) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, kernel_regularizer=reg)


@BACKBONES.register("lenet")
def _lenet(x, cfg, reg):
    x = _conv(32, 5, reg)(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(64, 5, reg)(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    return layers.Flatten()(x)


def _conv_bn(x, filters: int, batch_norm: bool, reg):
    # With batch norm the conv bias is redundant (BN's beta does its job).
    x = _conv(filters, 3, reg, use_bias=not batch_norm)(x)
    return FusedBatchNorm()(x) if batch_norm else x


def _conv_bn_relu(x, filters: int, batch_norm: bool, reg):
    return layers.ReLU()(_conv_bn(x, filters, batch_norm, reg))


@BACKBONES.register("small_cnn")
def _small_cnn(x, cfg, reg):
    for filters in (cfg.num_channels, 2 * cfg.num_channels):
        x = _conv_bn(x, filters, cfg.batch_norm, reg)
        # Pool, then ReLU: the same values as ReLU then pool (both are monotonic, so they
        # commute exactly), with the ReLU and its gradient on a 4x smaller tensor.
        x = layers.MaxPooling2D(2)(x)
        x = layers.ReLU()(x)
    return layers.Flatten()(x)


@BACKBONES.register("vgg_gap")
def _vgg_gap(x, cfg, reg):
    """Two conv-conv-pool blocks, then global average pooling (the deeper option)."""
    for filters in (cfg.num_channels, 2 * cfg.num_channels):
        x = _conv_bn_relu(x, filters, cfg.batch_norm, reg)
        x = _conv_bn_relu(x, filters, cfg.batch_norm, reg)
        x = layers.MaxPooling2D(2)(x)
    x = _conv_bn_relu(x, 4 * cfg.num_channels, cfg.batch_norm, reg)
    return layers.GlobalAveragePooling2D()(x)


def build_model(cfg, input_shape: tuple[int, int, int], weight_decay: float = 0.0) -> keras.Model:
    """The embedding model: images float [B, H, W, C] in [0, 1] -> float32 [B, embedding_size].

    ``cfg`` has name, embedding_size and l2_normalize, plus the backbone's own keys
    (num_channels and batch_norm for small_cnn and vgg_gap). ``weight_decay`` adds an L2
    penalty on kernels to ``model.losses``.
    """
    backbone = BACKBONES.get(str(cfg.name))  # ConfigError naming the valid names
    reg = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    features = backbone(inputs, cfg, reg)
    # No activation: the embedding may take any sign. float32 for a stable loss.
    x = layers.Dense(cfg.embedding_size, kernel_regularizer=reg, dtype="float32", name="embedding")(
        features
    )
    if cfg.l2_normalize:
        x = layers.UnitNormalization(axis=-1, dtype="float32", name="l2_normalize")(x)
    return keras.Model(inputs, x, name=cfg.name)


# --------------------------------------------------------------------------- pretrained


@dataclass(frozen=True)
class Application:
    """A keras.applications backbone: its constructor, the input it expects and its args."""

    constructor: str  # the name in keras.applications
    preprocessing: str  # caffe: BGR minus ImageNet's mean | raw: 0..255 (it normalises itself)
    kwargs: tuple[tuple[str, Any], ...] = ()


APPLICATIONS = {
    "resnet50": Application("ResNet50", "caffe"),
    "efficientnetv2_b0": Application("EfficientNetV2B0", "raw", (("include_preprocessing", True),)),
    "mobilenetv3_small": Application("MobileNetV3Small", "raw", (("include_preprocessing", True),)),
}
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications' "caffe" preprocessing
MIN_INPUT_SIZE = 32


@keras.saving.register_keras_serializable(package="tripletlab")
class ImagenetInput(layers.Layer):
    """Images in [0, 1] (1 or 3 channels) -> the input a keras.applications model expects.

    ``mode`` "raw": RGB in 0..255 (EfficientNetV2, MobileNetV3 normalise inside the model);
    "caffe": BGR in 0..255 minus ImageNet's mean (ResNet50's ``preprocess_input``). A
    grayscale image is repeated into 3 channels. Part of the model, so a saved run embeds
    images the way it was trained.
    """

    def __init__(self, mode: str = "raw", **kwargs):
        kwargs.setdefault("dtype", "float32")  # 255 * x and the mean stay exact under bf16
        super().__init__(**kwargs)
        if mode not in ("raw", "caffe"):
            raise ValueError(f"mode must be raw or caffe, got {mode!r}")
        self.mode = mode

    def call(self, x):
        from keras import ops

        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        x = ops.cast(x, "float32") * 255.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1) - ops.convert_to_tensor(IMAGENET_MEAN_BGR, "float32")
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def keras_home() -> Path:
    """Keras' cache folder ($KERAS_HOME or ~/.keras): ImageNet weights go to its models/."""
    try:
        from keras.src.backend.config import keras_home as home

        return Path(os.path.expanduser(home()))
    except ImportError:  # another Keras layout: its documented default
        return Path(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")))


def _download_weights(original: Callable, **kwargs) -> str:
    return original(**kwargs)


@contextlib.contextmanager
def _weights_from_cache(model_name: str):
    """While a keras.applications model is built: a weights file already in Keras' cache
    is used as is (its hash checked); a missing one is downloaded if possible, else one
    DataError names the file, the folder it belongs in and its URL."""
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname=None, origin=None, cache_subdir="datasets", file_hash=None, **kwargs):
        base = Path(os.path.expanduser(kwargs.pop("cache_dir", None) or keras_home()))
        target = base / cache_subdir / str(fname)
        fallback = (
            Path("/tmp/.keras") / cache_subdir / str(fname)
        )  # Keras' own, if base is read-only
        for path in (target, fallback):
            if path.is_file():
                if file_hash and not file_utils.validate_file(str(path), file_hash):
                    raise DataError(
                        f"{path} does not have the content Keras expects for {model_name}'s "
                        f"ImageNet weights (hash {file_hash[:12]}...): it is incomplete or "
                        f"corrupt; download {origin} again and replace it"
                    )
                return str(path)
        try:
            return _download_weights(
                original,
                fname=fname,
                origin=origin,
                cache_subdir=cache_subdir,
                file_hash=file_hash,
                cache_dir=str(base),
                **kwargs,
            )
        except Exception as exc:  # no network: URLError, or Keras' "URL fetch failure"
            raise DataError(
                f"model.weights=imagenet needs {target}, which is not there, and the download "
                f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}). On a "
                f"machine with internet access download {origin} and copy it to "
                f"{target.parent}/ (or set KERAS_HOME to a folder whose models/ holds it); "
                "or use model.weights=none, or model.weights=<a .weights.h5 file>"
            ) from None

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _weights_arg(cfg) -> str | None:
    """``model.weights`` as keras.applications takes it: "imagenet", None or a file path."""
    value = str(getattr(cfg, "weights", "none"))
    if value.lower() in ("none", "null", ""):
        return None
    if value == "imagenet":
        return value
    path = Path(os.path.expandvars(value)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.weights={value}: no such file; use imagenet, none, or the path of a "
            f".weights.h5 file saved from a {cfg.name} backbone (include_top=False)"
        )
    if not path.name.endswith(".h5"):
        raise ConfigError(f"model.weights={value}: expected a .weights.h5 (or .h5) file")
    return str(path)


def _synchronize_batch_norm(backbone: keras.Model) -> None:
    """Under a ``tf.distribute`` distribution with several replicas (built inside its scope), the backbone's
    Keras BatchNormalization layers use the global batch's moments (``synchronized``).

    Keras creates their moving statistics with aggregation "none", so with per-replica
    moments each replica's copy would silently drift apart. Synchronised (as FusedBatchNorm
    is), every replica computes the same moments and writes the same
    moving statistics: those of a single device on the global batch, and so are the
    normalised outputs and the gradients. One device: unchanged (no collective per layer).
    """
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.synchronized = True


def _application(x, cfg, reg):
    """A keras.applications backbone with global average pooling: [B, H, W, C] -> [B, F]."""
    spec = APPLICATIONS[str(cfg.name)]
    h, w = int(x.shape[1]), int(x.shape[2])
    if min(h, w) < MIN_INPUT_SIZE:
        raise ConfigError(
            f"model={cfg.name} needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got "
            f"{h}x{w}; set dataset.image_size (224 is what its ImageNet weights saw)"
        )
    weights = _weights_arg(cfg)
    constructor = getattr(keras.applications, spec.constructor)
    try:
        with _weights_from_cache(str(cfg.name)):
            backbone = constructor(
                include_top=False,
                weights=weights,
                input_shape=(h, w, 3),
                pooling="avg",
                **dict(spec.kwargs),
            )
    except (DataError, ConfigError):
        raise
    except Exception as exc:
        if weights is None:
            raise
        # A weights file of another architecture, or a damaged one.
        raise DataError(
            f"cannot load model.weights={cfg.weights} into {spec.constructor}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if getattr(cfg, "freeze_batch_norm", False):
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                # trainable=False also makes Keras run the layer in inference mode.
                layer.trainable = False
    _synchronize_batch_norm(backbone)
    if reg is not None:
        for layer in backbone.layers:
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and kernel.trainable:
                kernel.regularizer = reg
    return backbone(ImagenetInput(spec.preprocessing, name="imagenet_input")(x))


for _name in APPLICATIONS:
    BACKBONES.register(_name)(_application)
