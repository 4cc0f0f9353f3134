"""Mixed precision: float16 and bfloat16 train like float32; an overflow on one replica skips everywhere."""

import importlib.util
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework import losses

from toys import ArrayTrainer, config, weights_of

EXPERIMENTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
)


def _digits_trainer_class():
    """experiments/digits.py as `python experiments/digits.py` runs it: `experiments/` on the path."""
    sys.path.insert(0, EXPERIMENTS)
    try:
        spec = importlib.util.spec_from_file_location(
            "experiment_digits", os.path.join(EXPERIMENTS, "digits.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(EXPERIMENTS)
    return module.DigitsTrainer


def _digits(precision):
    cfg = framework.config.defaults()
    cfg.update(batch_size=64, epochs=4, steps_per_execution=32, precision=precision)
    cfg.optimizer.update(name="adam", learning_rate=3e-3)
    cfg.model.update(hidden=64, dropout=0.0)
    cfg.task.l2 = 1e-4
    cfg.data.eval_fraction = 0.2
    trainer = _digits_trainer_class()(cfg)
    return trainer, trainer.fit()


@pytest.fixture(scope="module")
def float32_digits():
    return _digits("float32")


@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_digits_reach_the_float32_accuracy_band(float32_digits, precision, compute):
    _, reference = float32_digits
    trainer, history = _digits(precision)
    hidden, logits = trainer.model.layers[0], trainer.model.layers[-1]
    assert hidden.compute_dtype == compute and hidden.kernel.dtype == "float32"
    assert logits.compute_dtype == "float32"  # the output layer asks for float32
    assert keras.config.dtype_policy().name == "float32"  # the policy was restored after build_model
    assert reference[-1]["val/accuracy"] >= 0.9
    assert history[-1]["val/accuracy"] == pytest.approx(reference[-1]["val/accuracy"], abs=0.03)
    assert history[-1]["loss"] == pytest.approx(reference[-1]["loss"], rel=0.2)
    if precision == "mixed_float16":
        assert history[-1]["loss_scale"] > 0
    else:
        assert "loss_scale" not in history[-1]


# ---- an overflow on replica 1 only -----------------------------------------------------
#
# A linear model and a global batch of 16 over 2 replicas. Replica 1's half
# has inputs 300x larger: its logits stay far inside float16's range (the
# loss is finite), but its kernel gradient, scaled by 2**15, overflows.
# Replica 0's half is harmless.


def linear():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


def overflow_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (32, 6)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    x[8:16] *= 300.0  # the second half of the first global batch: replica 1's
    return x, y


def test_keras_loss_scale_optimizer_alone_writes_inf_when_only_replica_1_overflows():
    """Documents the Keras 3.15 bug the framework routes around (see framework/optim/updates.py).

    If this starts failing, Keras has fixed LossScaleOptimizer under MirroredStrategy.
    """
    x, y = overflow_batches()
    strategy = framework.distribute._fresh_collective_keys(tf.distribute.MirroredStrategy)(
        ["/cpu:0", "/cpu:1"]
    )
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with strategy.scope():
            model = linear()
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
            optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy("float32")
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = ce(y, tf.cast(model(x), "float32")) / 16.0
        grads = tape.gradient(loss, model.trainable_variables, output_gradients=optimizer.dynamic_scale)
        optimizer.apply(grads, model.trainable_variables)
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]), loss

    batch = next(
        iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16)))
    )
    finite, loss = tf.function(lambda b: strategy.run(step, args=b))(batch)
    assert [bool(f) for f in strategy.experimental_local_results(finite)] == [True, False]
    assert all(np.isfinite(float(v)) for v in strategy.experimental_local_results(loss))
    kernel = np.asarray(model.layers[0].kernel.numpy())
    assert not np.all(np.isfinite(kernel))  # the overflow on replica 1 was applied everywhere


class Linear(ArrayTrainer):
    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, data=overflow_batches(), model_fn=linear, **kwargs)

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")


def test_overflow_on_replica_1_only_skips_the_step_and_halves_the_scale_on_every_replica():
    trainer = Linear(config(**{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2},
                            precision="mixed_float16", steps_per_epoch=1))  # fmt: skip
    initial = weights_of(linear())
    history = trainer.fit()  # the first global batch only: no error, the loss was finite
    optimizer, strategy = trainer.optimizer, trainer.strategy
    assert np.isfinite(history[-1]["loss"])
    assert int(optimizer.iterations.numpy()) == 0
    assert [float(s) for s in strategy.experimental_local_results(optimizer.dynamic_scale.value)] == [
        2.0**14
    ] * 2
    for variable, start in zip(trainer.model.trainable_variables, initial):
        for local in strategy.experimental_local_results(variable.value):
            np.testing.assert_array_equal(np.asarray(local), start)  # untouched on both replicas
    assert history[-1]["loss_scale"] == 2.0**14

    # The second batch is harmless: it is applied, with the halved scale, on both replicas alike.
    trainer.config.unlock()
    trainer.config.epochs = 2
    trainer.controller.train_input.steps = 2
    trainer.fit()
    assert int(optimizer.iterations.numpy()) == 1
    for variable in trainer.model.trainable_variables:
        first, second = (np.asarray(v) for v in strategy.experimental_local_results(variable.value))
        assert np.all(np.isfinite(first))
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(np.asarray(trainer.model.layers[0].kernel.numpy()), initial[0])
