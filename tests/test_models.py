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


@pytest.mark.parametrize("name", ["lenet", "small_cnn"])
def test_weight_decay_is_l2_on_every_kernel_and_nothing_else(name):
    import tensorflow as tf

    decay = 1e-2
    model = build_model(_cfg(name), (8, 8, 1), weight_decay=decay)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    assert len(kernels) == 3  # two convolutions and the embedding head
    for kernel in kernels:  # away from the initialiser's values, so a wrong factor shows
        kernel.assign(np.random.default_rng(kernel.shape[-1]).normal(0, 1, kernel.shape))
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    expected = decay * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
    grads = tape.gradient(
        penalty,
        [v.value for v in model.trainable_variables],  # the tf.Variables under Keras' ones
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    kernel_ids = {id(k) for k in kernels}
    for variable, grad in zip(model.trainable_variables, grads, strict=True):
        want = 2 * decay * variable.numpy() if id(variable) in kernel_ids else 0.0
        np.testing.assert_allclose(grad.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=variable.path)
    assert not build_model(_cfg(name), (8, 8, 1)).losses


# ------------------------------------------------------------------ pretrained backbones


def _pretrained(name="mobilenetv3_small", **kw):
    base = {"name": name, "embedding_size": 8, "l2_normalize": True, "weights": "none"}
    return OmegaConf.create(base | {"freeze_batch_norm": True} | kw)


def _batch_norms(model):
    import keras

    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]


def test_a_pretrained_backbone_takes_grey_or_rgb_and_freezes_batch_norm():
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    model = build_model(_pretrained(), (32, 32, 1), weight_decay=1e-4)
    emb = model(x, training=True).numpy()
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    norms = _batch_norms(model)
    assert norms and not any(bn.trainable for bn in norms)
    # Frozen batch norm runs in inference mode: training=True leaves its statistics alone.
    assert all(np.all(bn.moving_mean.numpy() == 0.0) for bn in norms)
    trainable = {id(v) for v in model.trainable_weights}
    assert not any(id(bn.gamma) in trainable for bn in norms)
    assert len(model.losses) > 10  # weight decay reached the backbone's kernels, not just the head
    free = build_model(_pretrained(freeze_batch_norm=False), (32, 32, 3))
    free(np.repeat(x, 3, axis=-1), training=True)
    assert all(bn.trainable for bn in _batch_norms(free))
    assert any(np.any(bn.moving_mean.numpy() != 0.0) for bn in _batch_norms(free))


def test_resnet_input_is_keras_own_preprocessing():
    import keras

    from tripletlab.models import ImagenetInput

    x = np.random.default_rng(1).random((2, 4, 4, 3), dtype=np.float32)
    ours = ImagenetInput("caffe")(x).numpy()
    theirs = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(ImagenetInput("raw")(x).numpy(), x * 255.0, rtol=1e-6)
    grey = ImagenetInput("raw")(x[..., :1]).numpy()
    np.testing.assert_allclose(grey, np.repeat(x[..., :1], 3, axis=-1) * 255.0, rtol=1e-6)


def test_weights_from_a_file_and_the_errors(tmp_path):
    import keras

    from tripletlab.errors import ConfigError, DataError

    donor = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    for v in donor.weights:
        v.assign(np.random.default_rng(len(v.path)).normal(0, 0.1, v.shape).astype(v.dtype))
    path = tmp_path / "backbone.weights.h5"
    donor.save_weights(path)
    model = build_model(_pretrained(weights=str(path)), (48, 48, 3))  # any input size
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for ours, theirs in zip(backbone.weights, donor.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    other = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(other)
    with pytest.raises(DataError, match=f"cannot load model.weights={other} into MobileNetV3Small"):
        build_model(_pretrained(weights=str(other)), (32, 32, 3))
    with pytest.raises(ConfigError, match="model.weights=/no/such.weights.h5: no such file"):
        build_model(_pretrained(weights="/no/such.weights.h5"), (32, 32, 3))
    with pytest.raises(ConfigError, match="at least 32x32, got 28x28"):
        build_model(_pretrained(), (28, 28, 1))


def test_imagenet_weights_offline_name_the_file_keras_expects(tmp_path, monkeypatch):
    from tripletlab import models
    from tripletlab.errors import DataError

    def offline(original, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(models, "keras_home", lambda: tmp_path)
    monkeypatch.setattr(models, "_download_weights", offline)
    name = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    with pytest.raises(DataError) as err:
        build_model(_pretrained(weights="imagenet"), (32, 32, 3))
    text = str(err.value)
    assert f"model.weights=imagenet needs {tmp_path / 'models' / name}, which is not there" in text
    assert f"keras-applications/mobilenet_v3/{name}" in text and "model.weights=none" in text
    # A file there is used as is, once its hash matches: a partial download is refused.
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / name).write_bytes(b"half a download")
    with pytest.raises(DataError, match=f"{name} does not have the content Keras expects"):
        build_model(_pretrained(weights="imagenet"), (32, 32, 3))
