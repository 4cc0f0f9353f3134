"""The step helpers a custom train_step calls: apply_gradients on a subset, non-finite errors, label-free losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses

from toys import ArrayTrainer, blobs, config, max_abs_diff, weights_of

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def three_parts(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="tanh", name="encoder"),
            keras.layers.Dense(16, activation="tanh", name="middle"),
            keras.layers.Dense(3, name="head"),
        ]
    )


class EncoderAndHead(ArrayTrainer):
    """Updates the encoder and the head with the trainer's optimizer; the middle layer stays as it is."""

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.model(x, training=True))
        encoder, head = self.model.get_layer("encoder"), self.model.get_layer("head")
        self.apply_gradients(tape, loss, variables=encoder.trainable_variables + head.trainable_variables)
        return logs


def _dist(replicas):
    return (
        {} if replicas == 1 else {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas}
    )


@pytest.mark.parametrize("replicas", [1, 2])
def test_apply_gradients_to_a_subset_equals_keras_adam_built_on_that_subset(replicas):
    x, y = blobs(n=64)
    # Oracle: Keras fit with the middle layer frozen, so its Adam is built on encoder + head only.
    reference = three_parts()
    reference.get_layer("middle").trainable = False
    reference.compile(keras.optimizers.Adam(0.01), CE)
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    cfg = config(epochs=2, **{"optimizer.name": "adam", "optimizer.learning_rate": 0.01}, **_dist(replicas))
    trainer = EncoderAndHead(cfg, data=(x, y), model_fn=three_parts, loss=losses.Term(CE))
    trainer.fit()
    initial = three_parts()
    assert max_abs_diff(weights_of(trainer.model), weights_of(initial)) > 1e-2
    middle = trainer.model.get_layer("middle").get_weights()
    assert max_abs_diff(middle, initial.get_layer("middle").get_weights()) == 0.0
    assert max_abs_diff(weights_of(trainer.model), weights_of(reference)) <= 1e-6


class StrayHead(ArrayTrainer):
    """Trains a head held as an attribute, which the trainer's optimizer was not registered for."""

    own_optimizer = False

    def build_optimizer(self):
        self.head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
        if self.own_optimizer:
            self.both_opt = self.add_optimizer(keras.optimizers.SGD(0.1), [self.model, self.head])
        return super().build_optimizer()

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.head(self.model(x, training=True)))
        variables = self.model.trainable_variables + self.head.trainable_variables
        self.apply_gradients(tape, loss, variables=variables, optimizer=getattr(self, "both_opt", None))
        return logs


def test_a_variable_the_optimizer_was_not_registered_for_is_named_with_the_fix():
    trainer = StrayHead(config(), data=blobs(n=32), model_fn=three_parts, loss=losses.Term(CE))
    with pytest.raises(
        ValueError, match=r"'sequential_\d+/dense(_\d+)?/kernel'.*not among the variables.*add_optimizer"
    ):
        trainer.fit()


def test_an_optimizer_registered_for_a_list_of_models_trains_them_all():
    class OwnOptimizer(StrayHead):
        own_optimizer = True

    x, y = blobs(n=32)
    trainer = OwnOptimizer(config(), data=(x, y), model_fn=three_parts, loss=losses.Term(CE))
    head_before = weights_of(trainer.head)
    trainer.fit()
    # Oracle: Keras fit of the same stack (same initial weights), SGD(0.1).
    reference = keras.Sequential(
        [three_parts(), keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])]
    )
    reference.layers[1].set_weights(head_before)
    reference.compile(keras.optimizers.SGD(0.1), CE)
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert max_abs_diff(weights_of(trainer.model) + weights_of(trainer.head), weights_of(reference)) <= 1e-6


@pytest.mark.parametrize("loss", [losses.Term(CE, name="ce"), losses.Term(CE, name="ce") + losses.L2(1e-3)])
def test_a_non_finite_loss_names_the_step_and_the_term(loss):
    x, y = blobs(n=64)
    x[20, 1] = np.nan  # in the second batch of 16
    trainer = ArrayTrainer(config(), data=(x, y), model_fn=three_parts, loss=loss)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss at step 2: ") as info:
        trainer.fit()
    if len(loss.flat_terms()) == 1:
        assert "loss=nan (term 'ce')" in str(info.value)
    else:
        assert "loss/ce=nan" in str(info.value) and "l2" not in str(info.value)


def test_compute_loss_without_labels_for_label_free_terms():
    x, _ = blobs(n=16)
    trainer = ArrayTrainer(
        config(),
        data=(x, np.zeros(16, "int32")),
        model_fn=three_parts,
        loss=losses.PredictionTerm(lambda p: tf.reduce_sum(tf.square(p), -1), name="energy"),
    )
    y_pred = trainer.model(x)
    got = trainer.compute_loss(None, y_pred)
    assert float(got.loss) == pytest.approx(float(np.mean(np.sum(np.square(y_pred), -1))), rel=1e-6)
