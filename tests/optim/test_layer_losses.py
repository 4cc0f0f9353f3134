"""Layer losses (kernel and activity regularizers, `add_loss`) count as in Keras; oracle: Keras' own fit/evaluate."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from framework import losses

from toys import ArrayTrainer, blobs, config, max_abs_diff, weights_of

EPOCHS = 3
BATCH = 16
N = 88  # 5 full batches and one of 8 (4 per replica on two)


class Codebook(keras.layers.Layer):
    """Passes its input on; pulls a code vector toward it through `add_loss` alone (a VQ-VAE's codebook loss)."""

    def __init__(self, active=True):
        super().__init__()
        self.active = active

    def build(self, input_shape):
        self.code = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="code")

    def call(self, x):
        if self.active:
            self.add_loss(0.5 * ops.mean(ops.square(ops.stop_gradient(x) - self.code)))
        return x


def regularized_model(seed=0, regularized=True):
    """`regularized=False`: the same model and initial weights without any layer loss."""
    keras.utils.set_random_seed(seed)
    on = regularized
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                16,
                activation="tanh",
                kernel_regularizer=keras.regularizers.L2(0.05) if on else None,
                activity_regularizer=keras.regularizers.L2(0.02) if on else None,
            ),
            Codebook(active=on),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L1(0.01) if on else None),
        ]
    )


def _ce():
    return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")


def _keras_fit(x, y, epochs=EPOCHS):
    model = regularized_model()
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history
    return model, history["loss"]


def _dist(replicas):
    if replicas == 1:
        return {}
    return {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas}


def _ours(x, y, *, replicas=1, loss=None, cls=ArrayTrainer, **cfg):
    trainer = cls(
        config(batch_size=BATCH, epochs=EPOCHS, **_dist(replicas), **cfg),
        data=(x, y),
        model_fn=regularized_model,
        loss=loss if loss is not None else _ce(),
    )
    return trainer, trainer.fit()


@pytest.fixture(scope="module")
def data():
    return blobs(n=N)


@pytest.fixture(scope="module")
def keras_run(data):
    return _keras_fit(*data)


def _code(model):
    return next(np.array(w) for w in model.weights if w.path.endswith("code"))


def test_the_model_has_every_kind_of_layer_loss(data):
    model = regularized_model()
    model(data[0][:4])
    assert len(model.losses) == 4  # activity, add_loss, two kernel penalties
    assert float(ops.sum(ops.stack(model.losses))) > 0.1


def test_layer_losses_train_and_log_as_keras_fit_does(data, keras_run):
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data)
    assert np.abs(_code(keras_model)).max() > 1e-2  # add_loss alone moved the code vector
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 1e-6
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=1e-6)
    # Logged as their own term; the total is the sum of the terms' means.
    for h in history:
        assert h["loss/model_losses"] > 0.01
        assert h["loss"] == pytest.approx(h["loss/ce"] + h["loss/model_losses"], rel=1e-6)


def test_a_loss_that_holds_model_losses_counts_them_once(data, keras_run):
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data, loss=_ce() + losses.ModelLosses())
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 1e-6
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=1e-6)


def test_model_losses_with_weight_zero_leave_them_out(data):
    plain = regularized_model(regularized=False)
    plain.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(*data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    trainer, history = _ours(*data, loss=_ce() + losses.ModelLosses(weight=0.0))
    assert max_abs_diff(weights_of(trainer.model), weights_of(plain)) <= 1e-6
    assert np.abs(_code(trainer.model)).max() == 0.0
    assert history[-1]["loss/model_losses"] == 0.0 and history[-1]["loss/model_losses/raw"] > 0.01


@pytest.mark.parametrize("jit_compile", [False, True])  # True: the forward pass is XLA-compiled on its own
def test_two_replicas_train_as_keras_fit(data, keras_run, jit_compile):
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data, replicas=2, jit_compile=jit_compile)
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 1e-6
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=1e-5)


class _CustomStep(ArrayTrainer):
    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss, logs = self.compute_loss(y, y_pred)
        self.apply_gradients(tape, loss)
        return logs


def test_a_custom_train_step_calling_compute_loss_adds_them(data, keras_run):
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data, cls=_CustomStep)
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 1e-6
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [16, 88])
def test_evaluate_equals_keras_evaluate_whatever_the_batch_size(data, keras_run, batch_size):
    keras_model, _ = keras_run
    x, y = blobs(n=40, seed=1)  # batches of 16: 16, 16, 8
    expected = keras_model.evaluate(x, y, batch_size=batch_size, verbose=0)
    trainer = ArrayTrainer(config(batch_size=BATCH), data=data, model_fn=regularized_model, loss=_ce())
    trainer.model.set_weights(keras_model.get_weights())
    got = trainer.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))
    assert got["loss"] == pytest.approx(expected, rel=1e-6)


class _TwoModels(ArrayTrainer):
    """A second model held as an attribute: its layer losses reach only the objective that names it."""

    def build_optimizer(self):
        self.other = regularized_model(seed=1)
        self.other_opt = self.add_optimizer(keras.optimizers.SGD(0.1), self.other)
        return super().build_optimizer()

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            main = self.compute_loss(y, self.model(x, training=True))
        self.apply_gradients(tape, main.loss)
        with tf.GradientTape() as tape:
            other = self.compute_loss(y, self.other(x, training=True), model=self.other, prefix="other_")
        self.apply_gradients(tape, other.loss, optimizer=self.other_opt)
        return {**main.logs, **other.logs}


def test_a_model_held_as_an_attribute_trains_its_own_objective(data, keras_run):
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data, cls=_TwoModels)
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 1e-6
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=1e-6)
    other = regularized_model(seed=1)
    other.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    other_losses = other.fit(*data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history["loss"]
    assert max_abs_diff(weights_of(trainer.other), weights_of(other)) <= 1e-6
    np.testing.assert_allclose([h["other_loss"] for h in history], other_losses, rtol=1e-6)


def test_mixed_float16_trains_the_layer_losses(data, keras_run):
    # Keras' own fit fails here (it adds the float16 activity loss to the float32 ones), so the
    # oracle is its float32 run, within float16's precision.
    keras_model, keras_losses = keras_run
    trainer, history = _ours(*data, precision="mixed_float16")
    assert trainer.model.layers[0].compute_dtype == "float16"
    assert max_abs_diff(weights_of(trainer.model), weights_of(keras_model)) <= 5e-3
    np.testing.assert_allclose([h["loss"] for h in history], keras_losses, rtol=5e-3)
    np.testing.assert_allclose(_code(trainer.model), _code(keras_model), atol=5e-3)


def test_the_layer_losses_of_an_explicit_model_none_are_left_out(data):
    trainer = ArrayTrainer(config(batch_size=BATCH), data=data, model_fn=regularized_model, loss=_ce())
    x, y = data[0][:BATCH], data[1][:BATCH]
    y_pred = trainer.model(x)
    with_them = trainer.compute_loss(y, y_pred)
    without = trainer.compute_loss(y, y_pred, model=None)
    expected_ce = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, y_pred))
    assert float(without.loss) == pytest.approx(expected_ce, rel=1e-6)
    expected = expected_ce + float(ops.sum(ops.stack(trainer.model.losses)))
    assert float(with_them.loss) == pytest.approx(expected, rel=1e-6)
    assert "loss/model_losses" in with_them.logs and "loss/model_losses" not in without.logs
