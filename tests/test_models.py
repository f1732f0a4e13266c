"""Backbones honour embedding_size, accept any input shape; collapse detection."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tripletlab.models import FusedBatchNorm, build_model


def _cfg(name, **kw):
    base = {"name": name, "embedding_size": 16, "l2_normalize": False}
    base |= {"num_channels": 4, "batch_norm": True}
    return OmegaConf.create(base | kw)


@pytest.mark.parametrize("name", ["lenet", "small_cnn", "vgg_gap"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 24, 3)])
def test_any_input_shape_and_embedding_size(name, shape):
    model = build_model(_cfg(name, embedding_size=5), shape)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    emb = model(x, training=False).numpy()
    assert emb.shape == (2, 5)
    assert emb.dtype == np.float32


def test_embedding_has_no_relu_and_l2_is_optional():
    x = np.random.default_rng(1).random((64, 28, 28, 1), dtype=np.float32)
    raw = build_model(_cfg("small_cnn"), (28, 28, 1))(x).numpy()
    assert (raw < 0).any()  # a ReLU would make every coordinate >= 0
    unit = build_model(_cfg("small_cnn", l2_normalize=True), (28, 28, 1))(x).numpy()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_lenet_shape_matches_the_seed():
    model = build_model(_cfg("lenet", embedding_size=64), (28, 28, 1))
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]


def test_fused_batch_norm_matches_keras_batch_norm():
    import keras

    x = np.random.default_rng(2).normal(3.0, 2.0, (8, 5, 5, 3)).astype(np.float32)
    ours, ref = FusedBatchNorm(), keras.layers.BatchNormalization()
    for training in (True, False, True):
        # Inference differs in the 4th digit: the fused kernel's moving variance is unbiased.
        np.testing.assert_allclose(
            ours(x, training=training).numpy(),
            ref(x, training=training).numpy(),
            rtol=1e-3,
            atol=1e-5,
        )
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-4)
    # Unbiased vs biased variance differ by n / (n - 1) in the moving statistic.
    np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=2e-3)


def test_weight_decay_adds_regularisation_losses():
    model = build_model(_cfg("small_cnn"), (8, 8, 1), weight_decay=1e-4)
    assert len(model.losses) > 0
    assert not build_model(_cfg("small_cnn"), (8, 8, 1)).losses
