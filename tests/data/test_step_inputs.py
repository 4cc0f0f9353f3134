"""What a step reads: custom steps' own heads, per-replica batches, evaluate/predict on any dataset.

References: Keras' own evaluate/predict on the same weights, and the
one-device run of the same script.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from timeouts import seconds

from framework import losses
from framework.data import DistributedInput

from toys import ArrayTrainer, config, max_abs_diff, weights_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits(start, stop, *, images=False):
    d = load_digits()
    x = (d.data[start:stop] / 16).astype("float32")
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return x, d.target[start:stop].astype("int32")


def mirrored(replicas, **overrides):
    if replicas == 1:
        return config(**overrides)
    return config(
        **{
            "distribution.strategy": "mirrored",
            "distribution.cpu_devices": replicas,
            **overrides,
        }
    )


def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(10),
        ]
    )


def convnet():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def accuracy():
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


# ---- a custom step that builds its own heads ----------------------------------------


class OwnHeads(ArrayTrainer):
    """A single-output model whose step feeds the loss two heads it makes itself."""

    def build_loss(self):
        return losses.Term(CE, head="hard") + losses.Term(keras.losses.KLDivergence(), head="soft")

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            probs = tf.nn.softmax(logits)
            loss, logs = self.compute_loss(self.labels(y, probs), {"hard": logits, "soft": probs})
        self.apply_gradients(tape, loss)
        self.update_metrics(y, logits)
        return logs

    def labels(self, y, probs):
        return {"hard": y, "soft": tf.stop_gradient(tf.roll(probs, 1, axis=0))}


def test_a_custom_step_with_its_own_heads_trains_and_a_wrong_head_fails_when_traced():
    x, y = digits(0, 64)
    trainer = OwnHeads(config(), data=(x, y), model_fn=mlp)
    history = trainer.fit()
    assert np.isfinite(history[-1]["loss/hard"]) and np.isfinite(history[-1]["loss/soft"])

    class WrongHead(OwnHeads):
        def labels(self, y, probs):
            return {"hard": y, "smooth": probs}

    with pytest.raises(ValueError, match=r"labels for head 'smooth', which the model does not have"):
        WrongHead(config(), data=(x, y), model_fn=mlp).fit()


class Noise(keras.layers.Layer):
    """Draws from its own SeedGenerator at every call, in inference too."""

    def __init__(self):
        super().__init__()
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, x):
        return x + 0.1 * keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)


def test_the_first_batch_check_draws_nothing_from_the_models_seed_generators():
    def noisy():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((64,)), Noise(), keras.layers.Dense(10)])

    x, y = digits(0, 64)
    model = noisy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
    trainer = ArrayTrainer(config(), data=(x, y), model_fn=noisy)
    trainer.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(model)) <= 1e-6
    np.testing.assert_array_equal(
        trainer.model.layers[0].seed_generator.state, model.layers[0].seed_generator.state
    )


# ---- per-replica batches: no replica gets an empty one ---------------------------------


@pytest.mark.parametrize("replicas", [2, 4])
def test_the_last_step_gives_every_replica_rows_and_keeps_the_global_batches(replicas):
    x = np.arange(100, dtype="int64")
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    per_replica = DistributedInput(
        strategy,
        lambda ctx: tf.data.Dataset.from_tensor_slices(x).batch(ctx.get_per_replica_batch_size(32)),
        "build_train_dataset",
    )
    steps = [
        [t.numpy() for t in strategy.experimental_local_results(b)] for b in per_replica.fresh_iterator()
    ]
    assert per_replica.steps == len(steps) == 4
    assert all(len(rows) > 0 for step in steps for rows in step)
    np.testing.assert_array_equal(np.concatenate(steps[-1]), x[96:])
    for j, step in enumerate(steps):
        np.testing.assert_array_equal(np.concatenate(step), x[32 * j : 32 * (j + 1)])


def test_a_convnet_on_2_and_4_replicas_with_an_odd_count_of_per_replica_batches_equals_one_device():
    # 200 training and 72 eval examples in global batches of 32: 13 and 5 per-replica batches
    # on 2 replicas, 25 and 9 on 4; each pass ends on a step where a replica had no batch.
    train, held_out = digits(0, 200, images=True), digits(200, 272, images=True)
    runs = {}
    for replicas in (1, 2, 4):
        cfg = mirrored(replicas, batch_size=32)
        trainer = ArrayTrainer(cfg, data=train, eval_data=held_out, model_fn=convnet, metrics=accuracy)
        history = trainer.fit()
        runs[replicas] = weights_of(trainer.model), history[-1]
    for replicas in (2, 4):
        assert max_abs_diff(runs[replicas][0], runs[1][0]) <= 1e-5
        for key in ("accuracy", "val/accuracy"):
            assert runs[replicas][1][key] == runs[1][1][key], key


# ---- evaluate(dataset) and predict(dataset) ----------------------------------------------


def keras_twin(trainer):
    model = mlp()
    model.set_weights(trainer.model.get_weights())
    model.compile(loss=CE, metrics=accuracy())
    return model


@pytest.mark.parametrize("replicas", [1, 2])
def test_evaluate_any_dataset_matches_keras_evaluate(replicas):
    train, valid, test = digits(0, 256), digits(256, 320), digits(320, 416)
    trainer = ArrayTrainer(
        mirrored(replicas, batch_size=32),
        data=train,
        eval_data=valid,
        model_fn=mlp,
        metrics=accuracy,
    )
    trainer.fit()
    model = keras_twin(trainer)
    test_batches = tf.data.Dataset.from_tensor_slices(test).batch(32)  # full batches: means agree
    expected = model.evaluate(test_batches, verbose=0, return_dict=True)

    def per_replica(ctx):
        return tf.data.Dataset.from_tensor_slices(test).batch(ctx.get_per_replica_batch_size(32))

    for source in (test_batches, per_replica):
        got = trainer.evaluate(source)
        assert got["accuracy"] == expected["accuracy"]
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    # The validation set is still what evaluate() reads by default, and a new dataset is read anew.
    val = model.evaluate(tf.data.Dataset.from_tensor_slices(valid).batch(32), verbose=0, return_dict=True)
    assert trainer.evaluate()["accuracy"] == val["accuracy"]
    odd = tf.data.Dataset.from_tensor_slices(digits(416, 461)).batch(16)  # 45 examples, last batch 13
    assert trainer.evaluate(odd)["accuracy"] == model.evaluate(odd, verbose=0, return_dict=True)["accuracy"]


def test_an_input_of_unknown_length_is_counted_with_an_info_line_and_read_whole(caplog):
    trainer = ArrayTrainer(mirrored(1, batch_size=32), data=digits(0, 256), model_fn=mlp, metrics=accuracy)
    trainer.fit()
    model = keras_twin(trainer)
    known = tf.data.Dataset.from_tensor_slices(digits(416, 461)).batch(16)  # 45 examples: 3 batches
    unknown = known.unbatch().filter(lambda x, y: True).batch(16)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    with caplog.at_level("INFO", logger="absl"):  # absl's own level may have been raised by then
        got = trainer.evaluate(unknown)
    assert got["accuracy"] == model.evaluate(known, verbose=0, return_dict=True)["accuracy"]
    counted = [r for r in caplog.records if "unknown length" in r.getMessage()]
    assert [r.levelname for r in counted] == ["INFO"], [r.getMessage() for r in counted]
    assert "counted its 3 batches" in counted[0].getMessage()
    assert "steps_per_epoch" not in counted[0].getMessage()  # a training setting


@pytest.mark.parametrize("replicas", [1, 4])
def test_predict_returns_the_model_outputs_in_order(replicas):
    def two_heads():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(16, activation="tanh")(inputs)
        return keras.Model(
            inputs,
            {
                "digit": keras.layers.Dense(10)(hidden),
                "ink": keras.layers.Dense(1)(hidden),
            },
        )

    x, y = digits(0, 45)
    trainer = ArrayTrainer(
        mirrored(replicas, batch_size=16), data=(x, {"digit": y}), model_fn=two_heads,
        loss=losses.Term(CE).on("digit"),
    )  # fmt: skip
    reference = two_heads()  # on one device
    reference.set_weights(trainer.model.get_weights())
    expected = reference.predict(x, batch_size=16, verbose=0)
    for source in (
        tf.data.Dataset.from_tensor_slices(x).batch(16),  # 45 rows: a last batch of 13
        tf.data.Dataset.from_tensor_slices((x, y)).batch(7),  # labels are ignored
        lambda ctx: tf.data.Dataset.from_tensor_slices(x).batch(ctx.get_per_replica_batch_size(16)),
    ):
        got = trainer.predict(source)
        assert sorted(got) == ["digit", "ink"]
        for head in got:
            assert got[head].shape == expected[head].shape
            np.testing.assert_allclose(got[head], expected[head], atol=1e-6)


def test_evaluate_and_predict_name_a_bad_dataset():
    trainer = ArrayTrainer(config(), data=digits(0, 32), model_fn=mlp)
    with pytest.raises(
        TypeError,
        match=r"evaluate\(dataset\) must be a tf.data.Dataset of global batches",
    ):
        trainer.evaluate(digits(0, 32))
    with pytest.raises(
        ValueError,
        match=r"evaluate\(\) needs build_eval_dataset\(\) to return a dataset",
    ):
        trainer.evaluate()


# ---- several Trainers in one process ---------------------------------------------------------

SEVERAL_TRAINERS = """
import sys, tempfile
sys.path.insert(0, "tests")
import numpy as np
from toys import ArrayTrainer, blobs, config, mlp
data = blobs(64)
for _ in range(3):
    ArrayTrainer(config(), data=data, eval_data=data, model_fn=mlp, workdir=tempfile.mkdtemp()).fit()
"""


def test_several_trainers_in_one_process_trace_without_retracing_warnings():
    # A fresh process: TensorFlow warns at most twice per function over a whole process.
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", SEVERAL_TRAINERS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(900),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triggered tf.function retracing" not in done.stderr
