"""The compiled train step on one device, against the same computation written out: the
loss and fraction of the configured strategy on the batch, the gradient step it applies
(with the model's regularisation losses), the running means, the cross-batch memory it
mines then fills, and the negatives distance-weighted draws from (seed, step). Also: the
float16 loss scaling, what XLA compiles, and 2 replicas on logical CPUs (conftest.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers import TINY, compose
from tripletlab.training.memory import CrossBatchMemory
from tripletlab.training.steps import RUNNING_MEANS, make_running_means, make_train_step

LR = 0.1


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 4).astype(np.int64)
    return rng.normal(size=(16, 6)).astype(np.float32), labels


def _model(regularizer=None):
    import keras

    init = keras.initializers.RandomNormal(seed=1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, kernel_initializer=init, kernel_regularizer=regularizer),
            keras.layers.UnitNormalization(),
        ]
    )


def _mining(strategy, *overrides):
    return compose([*TINY, f"mining={strategy}", *overrides]).mining


def _expected(model, mining, images, labels, memory=None):
    """(loss, fraction, norm, spread, the weights after one SGD step) computed by hand."""
    import tensorflow as tf

    from tripletlab.losses import triplet_loss

    with tf.GradientTape() as tape:
        emb = model(images, training=True)
        loss, fraction = triplet_loss(
            labels,
            emb,
            strategy=mining.strategy,
            margin=mining.margin,
            squared=mining.squared,
            soft_margin=mining.soft_margin,
            memory=memory,
        )
        total = loss + tf.add_n(model.losses) if model.losses else loss
    grads = tape.gradient(total, model.trainable_variables)
    after = [(w - LR * g).numpy() for w, g in zip(model.trainable_variables, grads, strict=True)]
    emb = emb.numpy()
    norm = np.linalg.norm(emb, axis=1).mean()
    spread = np.linalg.norm(emb - emb.mean(0), axis=1).mean()
    return float(loss), float(fraction), norm, spread, after, emb


@pytest.mark.parametrize(
    "regularized, option",
    [
        (False, "mining.margin=0.3"),
        (True, "mining.margin=0.3"),
        (False, "mining.squared=true"),
        (False, "mining.soft_margin=true"),
    ],
)
def test_one_step_is_the_loss_of_the_batch_and_its_gradient(regularized, option):
    """One step: the loss, fraction, norm and spread of the batch and the SGD step on its
    gradient (with the regularisation), the strategy's options passed on (margin, squared
    distances, soft margin)."""
    import keras

    model = _model(keras.regularizers.L2(0.05) if regularized else None)
    mining = _mining("batch_hard", option)
    images, labels = _batch()
    loss, fraction, norm, spread, after, _ = _expected(model, mining, images, labels)
    means = make_running_means()
    step = make_train_step(model, keras.optimizers.SGD(LR), mining, means=means)
    got = [float(v) for v in step(images, labels)]
    np.testing.assert_allclose(got, [loss, fraction, norm, spread], rtol=1e-5, atol=1e-6)
    for w, want in zip(model.trainable_variables, after, strict=True):
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)
    assert [float(means[k].result()) for k in RUNNING_MEANS] == pytest.approx(got)
    assert fraction > 0 and loss > 0  # the batch has active triplets to learn from


def test_the_compiled_step_computes_what_the_plain_one_does():
    """semi_hard on 2 classes of 16: large classes, whose engine must be told it runs under
    XLA (the step passes jit_compile on to the loss)."""
    import keras

    mining = _mining("semi_hard")
    rng = np.random.default_rng(1)
    images, labels = rng.normal(size=(32, 6)).astype(np.float32), np.repeat(np.arange(2), 16)
    got = []
    for jit in (False, True):
        model = _model()
        step = make_train_step(model, keras.optimizers.SGD(LR), mining, jit_compile=jit)
        got.append([float(v) for v in step(images, labels)] + [model.get_weights()[0]])
    np.testing.assert_allclose(got[0][:4], got[1][:4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0][4], got[1][4], rtol=1e-4, atol=1e-5)


def test_the_step_mines_the_memory_of_earlier_steps_then_fills_it():
    import keras
    import tensorflow as tf

    model, mining = _model(), _mining("batch_hard")
    memory = CrossBatchMemory(size=32, dim=5)
    step = make_train_step(model, keras.optimizers.SGD(LR), mining, memory=memory)
    first, labels = _batch(2)
    loss, *_, emb = _expected(model, mining, first, labels)  # empty memory: the batch alone
    assert float(step(first, labels)[0]) == pytest.approx(loss, rel=1e-5)
    held_labels, held = memory.contents(1)
    np.testing.assert_array_equal(held_labels.numpy(), labels)
    np.testing.assert_allclose(held.numpy(), emb, rtol=1e-5, atol=1e-6)  # before the update
    second, _ = _batch(3)
    stored = (tf.constant(labels), tf.constant(held.numpy()))
    loss, *_ = _expected(model, mining, second, labels, memory=stored)
    alone, *_ = _expected(model, mining, second, labels)
    assert loss != pytest.approx(alone, rel=1e-3)  # the memory changes what is mined
    assert float(step(second, labels)[0]) == pytest.approx(loss, rel=1e-5)
    assert memory.contents(2)[0].shape == (32,)


def _distance_weighted_losses(seed, start, steps):
    """Losses of ``steps`` steps of a frozen model (learning rate 0: the same embeddings at
    every step) whose optimizer starts at iteration ``start``, as a resumed run's does."""
    import keras

    model, mining = _model(), _mining("distance_weighted")
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(start)
    step = make_train_step(model, optimizer, mining, seed=seed)
    images, labels = _batch(4)
    return [tuple(float(v) for v in step(images, labels)[:2]) for _ in range(steps)]


def test_distance_weighted_draws_new_negatives_each_step_and_the_same_after_a_resume():
    run = _distance_weighted_losses(seed=7, start=0, steps=3)
    assert len(set(run)) == 3, run  # same embeddings, three steps: three draws
    assert _distance_weighted_losses(seed=7, start=2, steps=1) == run[2:]  # resumed at step 2
    assert _distance_weighted_losses(seed=8, start=0, steps=1) != run[:1]  # the seed counts


def _per_anchor(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    """A strategy that forgets to reduce: the hardest-positive distance per anchor [B]."""
    import tensorflow as tf

    return tf.norm(embeddings, axis=1), tf.constant(1.0)


def _int_loss(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    return tf.size(labels), tf.constant(1.0)


def _loss_only(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    return tf.reduce_mean(embeddings)  # no fraction


def _per_anchor_fraction(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    return tf.reduce_mean(embeddings), tf.ones_like(labels, tf.float32)


def _unknown_rank(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    # py_function's result has no static shape: it is [B] when it runs
    per_anchor = tf.py_function(tf.identity, [tf.norm(embeddings, axis=1)], tf.float32)
    return per_anchor, tf.constant(1.0)


@pytest.mark.parametrize(
    "function, message",
    [
        (_per_anchor, r"returned a loss of shape \[16\] and dtype float32"),
        (_int_loss, r"returned a loss of shape \[\] and dtype int32"),
        (_loss_only, r"returned \w*Tensor; it must"),
        (_per_anchor_fraction, r"returned a fraction of shape \[16\]"),
        (_unknown_rank, r"a loss of shape unknown .*; give it a static shape, e.g. tf.ensure_sh"),
    ],
)
@pytest.mark.parametrize("jit", [False, True])
def test_a_strategy_returning_other_than_two_float_scalars_stops_the_first_step(
    function, message, jit
):
    """A registered strategy's result is checked where the step calls it (at trace time):
    one ConfigError naming the strategy and the contract, and no weight moves."""
    import keras

    from tripletlab.errors import ConfigError
    from tripletlab.registry import STRATEGIES, Strategy

    STRATEGIES.add(Strategy("careless", target=function, step_inputs=()))
    try:
        mining = _mining("batch_hard")
        mining.strategy = "careless"
        model = _model()
        before = model.get_weights()
        step = make_train_step(model, keras.optimizers.SGD(LR), mining, jit_compile=jit)
        with pytest.raises(ConfigError) as err:
            step(*_batch())
    finally:
        STRATEGIES.unregister("careless")
    assert str(err.value).startswith("mining.strategy='careless' returned ")
    assert "it must return (loss, fraction), each a floating scalar []" in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)


def _constant(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    return 0.5, 0.5  # floating scalars, but nothing to differentiate


def _through_numpy(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    loss = tf.numpy_function(lambda e: abs(e).mean(), [embeddings], tf.float32)
    return tf.ensure_shape(loss, []), tf.constant(1.0)


@pytest.mark.parametrize("function", [_constant, _through_numpy])
@pytest.mark.parametrize("regularized", [False, True])
def test_a_loss_with_no_gradient_stops_the_first_step(function, regularized):
    """Without a regulariser the optimizer failed with a traceback; with one, the run
    trained the regularisation alone without a word."""
    import keras

    from tripletlab.errors import ConfigError
    from tripletlab.registry import STRATEGIES, Strategy

    STRATEGIES.add(Strategy("careless", target=function, step_inputs=()))
    try:
        mining = _mining("batch_hard")
        mining.strategy = "careless"
        model = _model(keras.regularizers.L2(0.1) if regularized else None)
        before = model.get_weights()
        step = make_train_step(model, keras.optimizers.SGD(LR), mining)
        with pytest.raises(ConfigError) as err:
            step(*_batch())
    finally:
        STRATEGIES.unregister("careless")
    assert str(err.value).startswith(
        "mining.strategy='careless' returned a loss with no gradient with respect to the embeddings"
    ), str(err.value)
    assert "\n" not in str(err.value)
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_a_loss_of_another_float_dtype_trains_as_float32(dtype):
    """A floating scalar of any precision is accepted and cast: the step adds the float32
    regularisation losses to it (a TypeError before) and reports float32."""
    import keras
    import tensorflow as tf

    from tripletlab.registry import STRATEGIES, Strategy

    def spread(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
        loss = tf.reduce_mean(tf.square(embeddings - tf.reduce_mean(embeddings, 0)))
        return tf.cast(loss, dtype), tf.constant(0.25, dtype)

    results = {}
    for name in ("careless", "float32"):
        function = spread if name == "careless" else _spread32
        STRATEGIES.add(Strategy(name, target=function, step_inputs=()))
        try:
            mining = _mining("batch_hard")
            mining.strategy = name
            model = _model(keras.regularizers.L2(0.1))
            step = make_train_step(model, keras.optimizers.SGD(LR), mining)
            loss, fraction, _, _ = step(*_batch())
            results[name] = (loss, fraction, model.get_weights())
        finally:
            STRATEGIES.unregister(name)
    (loss, fraction, weights), (loss32, _, weights32) = results["careless"], results["float32"]
    assert loss.dtype == tf.float32 and fraction.dtype == tf.float32
    tol = {"float16": 1e-2, "bfloat16": 3e-2, "float64": 1e-6}[dtype]
    np.testing.assert_allclose(loss.numpy(), loss32.numpy(), rtol=tol)
    assert float(fraction) == 0.25
    for w, w32 in zip(weights, weights32, strict=True):
        np.testing.assert_allclose(w, w32, rtol=tol, atol=tol * 1e-2)


def _spread32(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf

    loss = tf.reduce_mean(tf.square(embeddings - tf.reduce_mean(embeddings, 0)))
    return loss, tf.constant(0.25)


def test_a_float16_step_with_a_loss_scale_optimizer_takes_the_unscaled_step():
    """float16 mixed precision: the step scales the loss for the LossScaleOptimizer, which
    unscales the gradients, so the weights take the float32 step (not one 1/scale of it)."""
    import keras

    mining = _mining("batch_hard", "mining.margin=0.3")
    images, labels = _batch()
    model32 = _model()
    start = model32.get_weights()
    loss, *_, after, _ = _expected(model32, mining, images, labels)

    init = keras.initializers.RandomNormal(seed=1)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, kernel_initializer=init, dtype="mixed_float16"),
            keras.layers.UnitNormalization(dtype="mixed_float16"),
        ]
    )
    # 2**8: the default 2**15 overflows this batch's float16 gradients (a skipped step)
    scale = 2.0**8
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR), initial_scale=scale)
    step = make_train_step(model, optimizer, mining, scales_loss=True)
    assert float(step(images, labels)[0]) == pytest.approx(loss, rel=1e-2)
    assert float(optimizer.dynamic_scale) == scale  # finite gradients: the step was taken
    for w, w0, want in zip(model.get_weights(), start, after, strict=True):
        moved = np.abs(want - w0).max()
        assert moved > 1e-2  # the float32 step is far above float16's error here
        np.testing.assert_allclose(w - w0, want - w0, atol=0.05 * moved)


class _ThroughPython:
    """A Keras layer that passes its input through tf.py_function (differentiable): an op
    XLA has no kernel for, so the model fails exactly when XLA compiles it."""

    def __new__(cls):
        import keras
        import tensorflow as tf

        class ThroughPython(keras.layers.Layer):
            def call(self, x):
                y = tf.py_function(tf.identity, [x], x.dtype)
                return tf.ensure_shape(y, x.shape)

        return ThroughPython()


def _spread_through_python(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    """_spread32 computed through tf.py_function (differentiable): a loss XLA cannot compile."""
    import tensorflow as tf

    loss = tf.py_function(tf.identity, [_spread32(labels, embeddings)[0]], tf.float32)
    return tf.ensure_shape(loss, []), tf.constant(0.25)


@pytest.mark.parametrize("where", ["model", "model with batch norm", "loss"])
def test_the_compiled_step_compiles_the_model_and_the_loss_on_one_device(where):
    """jit_compile=True puts the forward pass and the loss under XLA, the model also with a
    synchronised batch norm (on one device it syncs nothing): an op XLA cannot compile in
    either fails there, and trains without XLA."""
    import keras
    import tensorflow as tf

    from tripletlab.registry import STRATEGIES, Strategy

    mining = _mining("batch_hard")
    images, labels = _batch()
    norm = [keras.layers.BatchNormalization(synchronized=True)] if "norm" in where else []
    python = [] if where == "loss" else [_ThroughPython()]
    if where == "loss":
        STRATEGIES.add(Strategy("careless", target=_spread_through_python, step_inputs=()))
        mining.strategy = "careless"
    try:
        for jit in (False, True):
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), *norm, *python])
            step = make_train_step(model, keras.optimizers.SGD(LR), mining, jit_compile=jit)
            if not jit:
                assert np.isfinite(float(step(images, labels)[0]))
                continue
            with pytest.raises(tf.errors.InvalidArgumentError, match="PyFunc"):
                step(images, labels)
    finally:
        if where == "loss":
            STRATEGIES.unregister("careless")


def _batch_norm_model():
    import keras

    init = keras.initializers.RandomNormal(seed=1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, kernel_initializer=init),
            keras.layers.BatchNormalization(synchronized=True),
            keras.layers.UnitNormalization(),
        ]
    )


def test_two_replicas_with_a_synchronised_batch_norm_under_xla_take_the_single_device_step(
    caplog,
):
    """2 replicas on logical CPUs (tests/training/conftest.py), a batch norm that syncs
    them, jit_compile=True: XLA compiles the loss only (a collective cannot be compiled),
    and the step is one device's on the global batch: loss, moving mean and weights."""
    import keras
    import tensorflow as tf

    from tripletlab.distribute import configure_cpu_devices, distribute_batches

    mining = _mining("batch_hard", "mining.margin=0.3")
    images, labels = _batch()
    one = _batch_norm_model()
    loss, *_, after, _ = _expected(one, mining, images, labels)
    mean_one = one.layers[1].moving_mean.numpy()

    distribution = tf.distribute.MirroredStrategy(configure_cpu_devices(2))
    with distribution.scope():
        model, optimizer = _batch_norm_model(), keras.optimizers.SGD(LR)
    with caplog.at_level("INFO", logger="tripletlab"):
        step = make_train_step(
            model, optimizer, mining, jit_compile=True, distribution=distribution
        )
    assert "XLA compiles the loss only" in caplog.text
    batches = distribute_batches(
        distribution, lambda: tf.data.Dataset.from_tensors((images, labels)), len(labels)
    )
    got = step(*next(iter(batches)))
    assert float(got[0]) == pytest.approx(loss, rel=1e-5)
    for copy in distribution.experimental_local_results(model.layers[1].moving_mean.value):
        np.testing.assert_allclose(copy.numpy(), mean_one, rtol=1e-5, atol=1e-6)
    for w, want in zip(model.trainable_variables, after, strict=True):
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)
