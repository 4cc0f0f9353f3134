"""Label-free terms (`PredictionTerm`) and Keras' sample-weight normalisation (`reduction=`).

References: a hand-written GradientTape loop (a VAE, as in Keras' tutorial)
and Keras' own loss with sample weights, value and gradient, on one device;
the Trainer on 2 replicas must equal one replica.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses

from toys import ArrayTrainer, blobs, config, max_abs_diff, mlp, weights_of

FEATURES, LATENT = 8, 2


def vae():
    keras.utils.set_random_seed(3)
    x = keras.Input((FEATURES,), name="x")
    eps = keras.Input((LATENT,), name="eps")  # the sampling noise is an input: runs compare exactly
    h = keras.layers.Dense(16, activation="tanh")(x)
    z_mean, z_log_var = keras.layers.Dense(LATENT)(h), keras.layers.Dense(LATENT)(h)
    z = z_mean + keras.ops.exp(0.5 * z_log_var) * eps
    reconstruction = keras.layers.Dense(FEATURES)(keras.layers.Dense(16, activation="tanh")(z))
    return keras.Model(
        {"x": x, "eps": eps},
        {"reconstruction": reconstruction, "z_mean": z_mean, "z_log_var": z_log_var},
    )


def kl_divergence(outputs):
    mean, log_var = outputs["z_mean"], outputs["z_log_var"]
    return -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=-1)


def _vae_data(n=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    eps = rng.normal(size=(n, LATENT)).astype("float32")
    return {"x": x, "eps": eps}, {"reconstruction": x}  # no labels for the latent heads


def _fit_vae(replicas):
    extra = (
        {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas} if replicas > 1 else {}
    )
    loss = losses.Term(keras.losses.MeanSquaredError()).on("reconstruction") + losses.PredictionTerm(
        kl_divergence, weight=0.5, name="kl"
    )
    trainer = ArrayTrainer(config(epochs=2, **extra), data=_vae_data(), model_fn=vae, loss=loss)
    return trainer, trainer.fit()


@pytest.fixture(scope="module")
def vae_runs():
    return {replicas: _fit_vae(replicas) for replicas in (1, 2)}


def test_a_vae_with_a_label_free_kl_term_equals_a_hand_written_loop(vae_runs):
    trainer, history = vae_runs[1]
    model, optimizer = vae(), keras.optimizers.SGD(0.1)
    inputs, labels = _vae_data()
    epoch_losses = []
    for _ in range(2):  # batches of 16: 16, 16, 8
        total, count = 0.0, 0
        for start in range(0, 40, 16):
            batch = {k: v[start : start + 16] for k, v in inputs.items()}
            with tf.GradientTape() as tape:
                out = model(batch, training=True)
                mse = tf.reduce_mean(
                    tf.square(out["reconstruction"] - labels["reconstruction"][start : start + 16]),
                    -1,
                )
                loss = tf.reduce_mean(mse) + 0.5 * tf.reduce_mean(kl_divergence(out))
            optimizer.apply(
                tape.gradient(loss, model.trainable_variables),
                model.trainable_variables,
            )
            total, count = total + float(loss) * len(mse), count + len(mse)
        epoch_losses.append(total / count)
    assert max_abs_diff(weights_of(trainer.model), weights_of(vae())) > 1e-2  # training moved them
    assert max_abs_diff(weights_of(trainer.model), weights_of(model)) <= 1e-6
    assert [h["loss"] for h in history] == pytest.approx(epoch_losses, rel=1e-5)
    last = history[-1]
    assert last["loss"] == pytest.approx(last["loss/reconstruction"] + last["loss/kl"], rel=1e-6)
    assert last["loss/kl"] == pytest.approx(0.5 * last["loss/kl/raw"], rel=1e-6)


def test_a_label_free_term_on_two_replicas_equals_one(vae_runs):
    one, one_history = vae_runs[1]
    two, two_history = vae_runs[2]
    assert max_abs_diff(weights_of(two.model), weights_of(one.model)) <= 2e-6
    for key in ("loss", "loss/reconstruction", "loss/kl", "loss/kl/raw"):
        assert two_history[-1][key] == pytest.approx(one_history[-1][key], rel=1e-5), key


def test_a_label_free_term_reads_one_head_and_is_weighted_by_its_sample_weights():
    outputs = {
        "a": tf.constant([[1.0], [2.0], [3.0]]),
        "b": tf.constant([[0.0], [0.0], [0.0]]),
    }
    term = losses.PredictionTerm(lambda y: tf.reduce_sum(y, -1), name="a_sum").on("a")
    result = term(None, outputs, {"a": tf.constant([1.0, 0.0, 3.0])})
    assert float(result.total) == pytest.approx((1.0 + 9.0) / 4.0)
    keras_like = losses.PredictionTerm(lambda y: tf.reduce_sum(y, -1), reduction="sum_over_batch_size")
    assert float(
        keras_like.on("a")(None, outputs, {"a": tf.constant([1.0, 0.0, 3.0])}).total
    ) == pytest.approx(10.0 / 3.0)
    with pytest.raises(TypeError, match="PredictionTerm expects fn"):
        losses.PredictionTerm("kl")
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.Term(keras.losses.MeanSquaredError(), reduction="sum")


def _keras_value_and_gradient(model, x, y, w):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # sum_over_batch_size
    with tf.GradientTape() as tape:
        value = loss_fn(y, model(x), sample_weight=w)
    return float(value), [g.numpy() for g in tape.gradient(value, model.trainable_variables)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_sum_over_batch_size_equals_keras_weighted_loss_value_and_gradient(replicas):
    """One SGD step of rate 1 on 24 weighted examples (2 replicas: shards of 16 and 8)."""
    x, y = blobs(n=24, seed=8)
    w = np.random.default_rng(4).uniform(0.0, 2.0, 24).astype("float32")
    extra = (
        {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas} if replicas > 1 else {}
    )
    cfg = config(batch_size=32, **{"optimizer.learning_rate": 1.0}, **extra)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    loss = losses.Term(scce, reduction="sum_over_batch_size")
    trainer = ArrayTrainer(cfg, data=(x, y, w), model_fn=mlp, loss=loss)
    initial = weights_of(trainer.model)
    logs = trainer.fit()[0]

    value, gradient = _keras_value_and_gradient(mlp(), x, y, w)
    assert logs["loss"] == pytest.approx(value, rel=1e-6)
    step = [a - b for a, b in zip(initial, weights_of(trainer.model))]
    assert max_abs_diff(step, gradient) <= 1e-6
    # The default (the exact weighted mean) differs from Keras by mean(w).
    default = ArrayTrainer(cfg, data=(x, y, w), model_fn=mlp, loss=losses.Term(scce)).fit()[0]
    assert default["loss"] == pytest.approx(value * len(w) / np.sum(w), rel=1e-5)
