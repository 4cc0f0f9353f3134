"""Logged means are means over examples (or sample weights), whatever the batch sizes and replicas.

References: Keras' own `evaluate` and `fit`, numpy on one big batch, and an
uninterrupted run for a run resumed mid-epoch.
"""

import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework import losses

from toys import ArrayTrainer, ExampleCount, blobs, config, max_abs_diff, mlp, weights_of

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _replicas(n):
    if n == 1:
        return {}
    return {"distribution.strategy": "mirrored", "distribution.cpu_devices": n}


def _weights(n, seed=7):
    return np.random.default_rng(seed).uniform(0.0, 3.0, n).astype("float32")


def _ce(model, x, y):
    logits = model.predict(x, verbose=0).astype("float64")
    return np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y]


@pytest.mark.parametrize("replicas", [1, 2])
def test_evaluate_equals_keras_evaluate_with_a_partial_last_batch(replicas):
    """40 examples, batch 32: the mean over examples, not over the two batches; 2 replicas: one gets none."""
    x, y = blobs(n=40, seed=2)
    w = _weights(40)
    loss = losses.Term(SCCE, name="ce") + losses.Term(SCCE, name="keras_ce", reduction="sum_over_batch_size")
    trainer = ArrayTrainer(
        config(batch_size=32, **_replicas(replicas)),
        data=(x, y),
        eval_data=(x, y, w),
        model_fn=mlp,
        loss=loss,
    )
    logs = trainer.evaluate()

    reference = mlp()
    reference.set_weights(trainer.model.get_weights())
    reference.compile(loss=SCCE)
    batches = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
    keras_loss = reference.evaluate(batches, verbose=0)
    ce = _ce(reference, x, y)
    assert logs["loss/keras_ce"] == pytest.approx(keras_loss, rel=1e-5)
    assert logs["loss/ce"] == pytest.approx(np.sum(w * ce) / np.sum(w), rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["loss/ce"] + logs["loss/keras_ce"], rel=1e-6)
    unweighted = ArrayTrainer(config(batch_size=32, **_replicas(replicas)), data=(x, y), eval_data=(x, y),
                              model_fn=mlp).evaluate()  # fmt: skip
    assert unweighted["loss"] == pytest.approx(reference.evaluate(batches.map(lambda a, b, c: (a, b)), verbose=0),
                                               rel=1e-5)  # fmt: skip
    assert unweighted["loss"] == pytest.approx(np.mean(ce), rel=1e-5)


def test_train_epoch_loss_equals_keras_fit():
    """Two epochs, 40 examples in batches of 32 (no shuffling): the epoch loss Keras fit reports."""
    x, y = blobs(n=40, seed=4)
    trainer = ArrayTrainer(config(batch_size=32, epochs=2), data=(x, y), model_fn=mlp)
    history = trainer.fit()

    reference = mlp()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    fitted = reference.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=2, verbose=0)
    assert max_abs_diff(weights_of(trainer.model), weights_of(reference)) <= 1e-6
    assert [h["loss"] for h in history] == pytest.approx(fitted.history["loss"], rel=1e-5)


class Frozen(ArrayTrainer):
    """Learning rate 0: every step sees the same weights, so an epoch's means are one big batch's."""

    def build_optimizer(self):
        return keras.optimizers.SGD(0.0)


class CustomLogs(Frozen):
    """A custom step with a plain per-batch mean (weighed by examples) and a per-step value (weighed 1)."""

    def train_step(self, batch):
        x, y, w = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss, logs = self.compute_loss(y, logits, w)
        self.apply_gradients(tape, loss)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        logs["batch_accuracy"] = tf.reduce_mean(correct)  # NaN on a replica without examples
        step_index = self.optimizer.iterations - 1  # the step being run: 0, 1, 2, ...
        logs["step_index"] = framework.Weighted(tf.cast(step_index, tf.float32), 1.0)
        return logs


@pytest.mark.parametrize("replicas", [1, 2])
def test_train_epoch_means_equal_one_big_batch_with_weighted_examples(replicas):
    x, y = blobs(n=72, seed=5)  # batch 32: 32, 32, 8 (on 2 replicas the last step is 8 and 0)
    w = _weights(72, seed=1)
    loss = (
        losses.Term(SCCE, name="ce")
        + 0.5 * losses.Term(SCCE, name="keras_ce", reduction="sum_over_batch_size")
        + losses.L2(1e-2)
    )
    cfg = config(batch_size=32, **_replicas(replicas))
    trainer = CustomLogs(cfg, data=(x, y, w), model_fn=mlp, loss=loss)
    logs = trainer.fit()[0]

    ce = _ce(trainer.model, x, y)
    l2 = 1e-2 * sum(float(np.sum(np.square(v))) for v in trainer.model.get_weights()[::2])
    expected = {"loss/ce": np.sum(w * ce) / np.sum(w), "loss/keras_ce/raw": np.mean(w * ce), "loss/l2": l2}
    expected["loss/keras_ce"] = 0.5 * expected["loss/keras_ce/raw"]
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
    assert logs["loss"] == pytest.approx(expected["loss/ce"] + expected["loss/keras_ce"] + l2, rel=1e-5)
    logits = trainer.model.predict(x, verbose=0)
    assert logs["batch_accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == y), rel=1e-6)
    assert logs["step_index"] == pytest.approx(1.0)  # steps 0, 1, 2 weigh alike


def test_a_run_resumed_mid_epoch_logs_the_same_epoch_means(tmp_path):
    """SIGTERM after 2 of 5 steps (the last one partial), resume: the epoch means of a straight run."""
    x, y = blobs(n=72, seed=6)
    w = _weights(72, seed=2)
    loss = losses.Term(SCCE, name="ce") + losses.Term(SCCE, name="keras_ce", reduction="sum_over_batch_size")

    def trainer(workdir):
        cfg = config(**{"checkpoint.every_epochs": 1, "log_every_steps": 100})
        return Frozen(cfg, data=(x, y, w), model_fn=mlp, loss=loss, workdir=str(workdir))

    straight = trainer(tmp_path / "straight").fit()[0]

    def preempt(trainer_, step, logs):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as stopped:
        trainer(tmp_path / "split").fit(callbacks=[framework.Periodic(preempt, every_steps=2)])
    assert stopped.value.code == 0
    resumed = trainer(tmp_path / "split")
    logs = resumed.fit()[0]
    assert resumed.resumed_at_step == 2
    ce = _ce(resumed.model, x, y)
    assert logs["loss/ce"] == pytest.approx(np.sum(w * ce) / np.sum(w), rel=1e-5)
    assert logs["loss/keras_ce"] == pytest.approx(np.mean(w * ce), rel=1e-5)
    for key in ("loss", "loss/ce", "loss/keras_ce"):
        assert logs[key] == pytest.approx(straight[key], rel=1e-6), key


class _LabelCounts(keras.metrics.Metric):
    """Examples seen per class since the last reset: a vector result, logged as `labels/<i>`."""

    def __init__(self, classes=3):
        super().__init__(name="labels")
        self.counts = self.add_variable(shape=(classes,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.counts.assign_add(tf.math.bincount(y_true, minlength=3, maxlength=3, dtype="float32"))

    def result(self):
        return self.counts


@pytest.mark.parametrize("replicas", [1, 2])
def test_log_points_show_the_metrics_and_learning_rate_after_their_last_step(tmp_path, replicas):
    """Each log point's metric results and learning rate are those after its last step (read in the call).

    References: numpy counts of the examples and labels trained on so far in the epoch, and Keras'
    cosine schedule evaluated at the number of updates. 90 examples in batches of 16: 6 steps an
    epoch, the last one short (and on 2 replicas uneven).
    """
    x, y = blobs(n=90)
    cfg = config(
        **_replicas(replicas),
        epochs=2,
        log_every_steps=2,
        steps_per_execution=3,
        **{"optimizer.schedule": "cosine", "optimizer.decay_steps": 20},
    )
    metrics = lambda: [ExampleCount(), _LabelCounts()]  # noqa: E731
    trainer = ArrayTrainer(cfg, data=(x, y), model_fn=mlp, metrics=metrics, workdir=str(tmp_path))
    trainer.fit()
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 20)
    with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    points = [r for r in records if r["kind"] in ("train", "epoch")]
    assert [(r["kind"], r["step"]) for r in points] == [
        *[("train", s) for s in (2, 4, 6)],
        ("epoch", 6),
        *[("train", s) for s in (8, 10, 12)],
        ("epoch", 12),
    ]
    for r in points:
        seen = min(((r["step"] - 1) % 6 + 1) * 16, 90)
        labels = np.bincount(y[:seen], minlength=3)
        assert r["count"] == seen, r
        assert [r[f"labels/{i}"] for i in range(3)] == labels.tolist(), r
        np.testing.assert_allclose(r["lr"], float(schedule(r["step"])), rtol=1e-6)
    eager = trainer.metric_results()
    assert {k: eager[k] for k in ("count", "labels/0", "labels/1", "labels/2")} == {
        k: points[-1][k] for k in ("count", "labels/0", "labels/1", "labels/2")
    }


class _HostOnlyCount(keras.metrics.Metric):
    """Examples seen, read as a Python float: its result cannot be computed in a graph."""

    def __init__(self):
        super().__init__(name="host_count")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count.assign_add(tf.cast(tf.shape(y_true)[0], "float32"))

    def result(self):
        return float(self.count.numpy())


def test_a_metric_that_only_reads_on_the_host_is_logged_from_the_host(tmp_path):
    """The train call cannot read it after its steps: every log point reads the metrics eagerly instead."""
    x, y = blobs(n=90)
    cfg = config(epochs=1, log_every_steps=2, steps_per_execution=3)
    metrics = lambda: [_HostOnlyCount(), ExampleCount()]  # noqa: E731
    trainer = ArrayTrainer(cfg, data=(x, y), model_fn=mlp, metrics=metrics, workdir=str(tmp_path))
    trainer.fit()
    with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
        points = [r for r in map(json.loads, f) if r["kind"] in ("train", "epoch")]
    assert [r["step"] for r in points] == [2, 4, 6, 6]
    for r in points:
        assert r["host_count"] == r["count"] == min(r["step"] * 16, 90), r
