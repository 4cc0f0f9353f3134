"""The loss algebra core: composition, naming, and reductions on one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, 3)).astype("float32")
    p = rng.normal(size=(n, 3)).astype("float32")
    w = rng.uniform(0, 2, size=(n,)).astype("float32")
    return y, p, w


def test_keras_loss_term_equals_keras_default_reduction():
    y, p, _ = _data()
    huber = keras.losses.Huber(delta=0.5)
    result = losses.Term(huber)(y, p)
    assert float(result.total) == pytest.approx(float(huber(y, p)), rel=1e-6)
    assert list(result.terms) == ["huber_loss"]


def test_weighted_mean_divides_by_the_sum_of_weights():
    y, p, w = _data()
    result = losses.Term(keras.losses.MeanSquaredError())(y, p, sample_weight=w)
    per_example = np.mean((y - p) ** 2, axis=-1)
    assert float(result.total) == pytest.approx(np.sum(w * per_example) / np.sum(w), rel=1e-6)


def test_scalar_returning_function_is_a_batch_mean():
    y, p, _ = _data()

    def seed_huber(y_true, y_pred, delta=1.0):  # the common tutorial form: returns reduce_mean
        error = tf.abs(y_true - y_pred)
        quadratic = tf.minimum(error, delta)
        return tf.reduce_mean(0.5 * quadratic**2 + delta * (error - quadratic))

    result = losses.Term(seed_huber)(y, p)
    assert float(result.total) == pytest.approx(float(keras.losses.Huber(1.0)(y, p)), rel=1e-6)


def test_composition_weights_names_and_total():
    y, p, _ = _data()
    mse = keras.losses.MeanSquaredError()
    mae = keras.losses.MeanAbsoluteError()
    loss = 2.0 * losses.Term(mse, name="mse") + losses.Term(mae, name="mae", weight=0.5) * 3
    result = loss(y, p)
    assert result.terms["mse"].numpy() == pytest.approx(2 * float(mse(y, p)), rel=1e-6)
    assert result.terms["mae"].numpy() == pytest.approx(1.5 * float(mae(y, p)), rel=1e-6)
    assert result.raw["mae"].numpy() == pytest.approx(float(mae(y, p)), rel=1e-6)
    assert float(result.total) == pytest.approx(sum(float(v) for v in result.terms.values()), rel=1e-6)


def test_heads_select_outputs_and_labels_and_collisions_get_qualified():
    y, p, _ = _data()
    y_true = {"a": y, "b": y[:, :1]}
    y_pred = {"a": p, "b": p[:, :1]}
    loss = losses.Term(keras.losses.MeanSquaredError()).on("a") + losses.Term(
        keras.losses.MeanSquaredError()
    ).on("b")
    result = loss(y_true, y_pred)
    assert set(result.terms) == {"a", "b"}
    assert float(result.terms["b"]) == pytest.approx(np.mean((y[:, 0] - p[:, 0]) ** 2), rel=1e-6)
    both = losses.Term(keras.losses.MeanSquaredError()).on("a") + losses.Term(
        keras.losses.MeanAbsoluteError()
    ).on("a")
    assert set(both(y_true, y_pred).terms) == {"a/mean_squared_error", "a/mean_absolute_error"}


def test_explicit_duplicate_names_are_rejected():
    mse = keras.losses.MeanSquaredError()
    with pytest.raises(ValueError, match="Two loss terms are named 'x'"):
        losses.Term(mse, name="x") + losses.Term(mse, name="x")


def test_l2_covers_kernels_not_biases_and_model_losses_reads_layer_penalties():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L1(0.01)),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    kernels = [v.numpy() for v in model.trainable_variables if v.name == "kernel"]
    assert len(kernels) == 2
    result = (losses.L2(0.1) + losses.ModelLosses())(None, None, model=model)
    assert float(result.terms["l2"]) == pytest.approx(0.1 * sum(np.sum(k**2) for k in kernels), rel=1e-5)
    assert float(result.terms["model_losses"]) == pytest.approx(0.01 * np.sum(np.abs(kernels[0])), rel=1e-5)


def test_schedule_weight_is_evaluated_at_the_step():
    y, p, _ = _data()
    mse = keras.losses.MeanSquaredError()
    warmup = losses.Term(mse, weight=lambda step: tf.minimum(1.0, tf.cast(step, tf.float32) / 10.0))
    at_5 = warmup(y, p, step=tf.constant(5, tf.int64))
    at_20 = warmup(y, p, step=tf.constant(20, tf.int64))
    assert float(at_5.total) == pytest.approx(0.5 * float(mse(y, p)), rel=1e-6)
    assert float(at_20.total) == pytest.approx(float(mse(y, p)), rel=1e-6)


def test_terms_compute_in_float32_from_half_precision_predictions():
    y, p, _ = _data()
    result = losses.Term(keras.losses.MeanSquaredError())(y, tf.cast(p, tf.float16))
    assert result.total.dtype == tf.float32
