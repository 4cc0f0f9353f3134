"""Bad input: each failure names its culprit and nothing is trained on NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses

from toys import ArrayTrainer, blobs, config, mlp


def two_head_model():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3)(hidden), "reg": keras.layers.Dense(1)(hidden)})


CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Wrong(ArrayTrainer):
    pass


def test_build_model_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_model\(\) must return a keras.Model, got list"):
        ArrayTrainer(config(), data=blobs(), model_fn=lambda: [mlp()])


def test_build_loss_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_loss\(\) must return a framework.losses.Loss"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, loss=CE)


def test_build_metrics_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_metrics\(\) must return keras.metrics.Metric objects"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, metrics=lambda: ["accuracy"])


def test_build_train_dataset_wrong_type_names_the_hook():
    class NumpyData(ArrayTrainer):
        def build_train_dataset(self, input_context):
            return self.data

    trainer = NumpyData(config(), data=blobs(), model_fn=mlp)
    with pytest.raises(TypeError, match=r"build_train_dataset\(\) must return a tf.data.Dataset, got tuple"):
        trainer.fit()


def test_loss_on_a_head_the_model_lacks_names_both():
    loss = losses.Term(CE).on("class")
    with pytest.raises(KeyError, match=r"reads head 'class', but the model's heads are \['cls', 'reg'\]"):
        ArrayTrainer(config(), data=blobs(), model_fn=two_head_model, loss=loss)


def _two_head_data(y_keys):
    x, y = blobs()
    labels = {"cls": y, "reg": x[:, :1]}
    return x, {k: labels[k] for k in y_keys}


def test_batch_missing_a_head_names_it():
    loss = losses.Term(CE).on("cls") + losses.Term(keras.losses.MeanSquaredError()).on("reg")
    trainer = ArrayTrainer(config(), data=_two_head_data(["cls"]), model_fn=two_head_model, loss=loss)
    with pytest.raises(ValueError, match=r"no labels for head 'reg'"):
        trainer.fit()


def test_batch_with_an_unknown_head_names_it():
    x, y = blobs()
    data = (x, {"cls": y, "reg": x[:, :1], "depth": x[:, :1]})
    loss = losses.Term(CE).on("cls")
    trainer = ArrayTrainer(config(), data=data, model_fn=two_head_model, loss=loss)
    with pytest.raises(ValueError, match=r"labels for head 'depth', which the model does not have"):
        trainer.fit()


def test_single_label_for_a_multi_head_model_names_the_heads():
    loss = losses.Term(CE).on("cls")
    trainer = ArrayTrainer(config(), data=blobs(), model_fn=two_head_model, loss=loss)
    with pytest.raises(
        ValueError, match=r"model has heads \['cls', 'reg'\] but the batch labels are a single"
    ):
        trainer.fit()


def test_shape_mismatch_names_term_and_head():
    x, y = blobs()
    data = (x, {"cls": y, "reg": np.ones((len(x), 3), "float32")})
    loss = losses.Term(CE).on("cls") + losses.Term(keras.losses.MeanSquaredError(), name="mse").on("reg")
    trainer = ArrayTrainer(config(), data=data, model_fn=two_head_model, loss=loss)
    with pytest.raises(
        ValueError,
        match=r"Loss term .mse. on head .reg.: labels of shape \(None, 3\) do not match predictions of shape \(None, 1\)",
    ):
        trainer.fit()


def test_non_finite_loss_stops_at_the_step_and_names_the_term():
    x, y = blobs(n=96)
    x[40, 2] = np.nan  # example 40 is in the third batch of 16
    loss = losses.Term(CE, name="ce") + losses.L2(1e-3)
    trainer = ArrayTrainer(config(epochs=2, steps_per_execution=8), data=(x, y), model_fn=mlp, loss=loss)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss at step 3: .*loss/ce=nan") as info:
        trainer.fit()
    assert "loss/l2=" not in str(info.value)  # the regularizer stayed finite
    weights = trainer.model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    # The weights are those after step 2: replay two steps on a fresh trainer.
    clean = ArrayTrainer(config(epochs=1, steps_per_epoch=2), data=(x[:32], y[:32]), model_fn=mlp, loss=loss)
    clean.fit()
    for a, b in zip(weights, clean.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_loss_under_two_replicas_skips_everywhere():
    x, y = blobs(n=64)
    x[24, 0] = np.inf  # second global batch, second replica's half
    trainer = ArrayTrainer(
        config(**{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2}),
        data=(x, y),
        model_fn=mlp,
    )
    with pytest.raises(FloatingPointError, match=r"Non-finite gradients at step 2 \(the loss was finite\)"):
        trainer.fit()
    for v in trainer.model.trainable_variables:
        values = trainer.strategy.experimental_local_results(v.value)
        assert all(np.all(np.isfinite(np.asarray(r))) for r in values)
        np.testing.assert_array_equal(np.asarray(values[0]), np.asarray(values[1]))


def test_schedule_returning_a_vector_names_the_term():
    loss = losses.Term(CE, name="ce", weight=lambda step: tf.ones([2]))
    trainer = ArrayTrainer(config(), data=blobs(), model_fn=mlp, loss=loss)
    with pytest.raises(ValueError, match=r"Loss term 'ce': its weight schedule returned shape \(2,\)"):
        trainer.fit()
