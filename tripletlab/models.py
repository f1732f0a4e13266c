"""Embedding backbones (Keras 3 functional models).

Unlike the seed, ``embedding_size`` is honoured and the embedding has no ReLU (a ReLU would
confine it to the positive orthant). L2 normalisation is optional. The last layers run in
float32 under mixed precision, so the embedding the loss sees is always float32.

A backbone is a function ``(images, cfg, reg) -> features``: Keras tensors [B, H, W, C] ->
[B, F], with ``cfg`` the model node (``cfg.num_channels``...) and ``reg`` the kernel
regulariser (or None) for its layers. Adding one is that function, registered with
``@BACKBONES.register("name")`` (:mod:`tripletlab.registry`), plus ``conf/model/name.yaml``;
:func:`build_model` adds the embedding head.
"""

from __future__ import annotations

import keras
from keras import layers

from tripletlab.registry import BACKBONES


@keras.saving.register_keras_serializable(package="tripletlab")
class FusedBatchNorm(layers.Layer):
    """Batch normalisation over the channels of NHWC images with TensorFlow's fused kernel.

    Same maths and defaults as ``keras.layers.BatchNormalization`` (momentum 0.99,
    epsilon 1e-3), but Keras 3 computes moments and normalisation as separate ops, which made
    the small CNN's train step twice as slow on CPU; ``FusedBatchNormV3`` does one pass
    forward and one backward (oneDNN on CPU, cuDNN on GPU).
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=channels, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=channels, initializer="ones", trainable=False, name="moving_variance"
        )

    def call(self, x, training=False):
        import tensorflow as tf

        gamma, beta = tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32")
        if training:
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

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


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
