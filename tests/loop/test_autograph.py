"""AutoGraph: a user's step may branch on tensors in Python; the framework's own steps are not converted."""

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

from framework import losses

from toys import ArrayTrainer, blobs, config, mlp

X, Y = blobs(n=96)  # 6 batches of 16, unshuffled
SHIFT = float(np.median(X[:, 0]))


def _positive_batches(x):
    """numpy: per batch of 16, 1.0 if the mean of its first feature exceeds SHIFT."""
    return [float(x[i : i + 16, 0].mean() > SHIFT) for i in range(0, len(x), 16)]


class BranchingSteps(ArrayTrainer):
    """Steps with Python `if`s on tensors: they need AutoGraph's conversion."""

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss, logs = self.compute_loss(y, y_pred, None)
        self.apply_gradients(tape, loss)
        if tf.reduce_mean(x[:, 0]) > SHIFT:
            positive = tf.constant(1.0)
        else:
            positive = tf.constant(0.0)
        return {**logs, "positive": positive}

    def eval_step(self, batch):
        x, _ = batch
        if tf.reduce_mean(x[:, 0]) > SHIFT:
            positive = tf.constant(1.0)
        else:
            positive = tf.constant(0.0)
        return {"positive": positive}


def test_a_custom_step_with_python_branches_on_tensors_is_converted():
    trainer = BranchingSteps(config(epochs=1), data=(X, Y), eval_data=(X, Y), model_fn=mlp)
    history = trainer.fit(validate=False)
    expected = np.mean(_positive_batches(X))  # full batches: every batch weighs the same
    assert 0 < expected < 1
    np.testing.assert_allclose(history[-1]["positive"], expected, rtol=1e-6)
    np.testing.assert_allclose(trainer.evaluate()["positive"], expected, rtol=1e-6)


class BranchingLoss(ArrayTrainer):
    """The default steps, with a `compute_loss` override that branches on a tensor in Python."""

    def compute_loss(self, y, y_pred, sample_weight=None):
        result = super().compute_loss(y, y_pred, sample_weight)
        loss = result.loss
        if tf.reduce_mean(y_pred[:, 0]) > 1e9:  # never: the loss is unchanged
            loss = loss * 0.0
        return result._replace(loss=loss)


def test_an_overridden_compute_loss_with_python_branches_is_converted_in_the_default_steps():
    """Both default steps trace (unconverted, the `if` would raise); the eval loss equals Keras'."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainer = BranchingLoss(
        config(epochs=1), data=(X, Y), eval_data=(X, Y), model_fn=mlp, loss=losses.Term(loss, name="ce")
    )
    history = trainer.fit()
    np.testing.assert_allclose(history[-1]["val/loss"], float(loss(Y, trainer.model(X))), rtol=1e-5)


def test_the_default_steps_trace_without_converting_framework_code(monkeypatch):
    converted = []
    transform = autograph_api._TRANSPILER.transform

    def recording(obj, user_context):
        if getattr(obj, "__module__", "").startswith("framework"):
            converted.append(obj.__qualname__)
        return transform(obj, user_context)

    monkeypatch.setattr(autograph_api._TRANSPILER, "transform", recording)
    trainer = ArrayTrainer(
        config(epochs=1), data=(X, Y), eval_data=(X, Y), model_fn=mlp,
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )  # fmt: skip
    trainer.fit()
    assert converted and set(converted) == {"_step_loop.<locals>.multi_step"}, converted
