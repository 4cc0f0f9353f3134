"""Epochs of `config.steps_per_epoch` read on through a finite dataset, as Keras' fit does.

Six batches, `steps_per_epoch=2`: epoch 1 reads batches 0-1, epoch 2 batches
2-3, epoch 3 batches 4-5, and epoch 4 starts the next pass. Each example's
target is its batch's index, so a metric that averages the targets is the
mean batch index an epoch read. References: Keras' `fit(steps_per_epoch=...)`
on the same model and data order (SGD, no reshuffle): its per-epoch means and
final weights; the arithmetic of reading on; the one-device run for two
mirrored replicas; an unbroken run for a run stopped (SIGTERM) and resumed.
"""

import logging
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from framework import data, losses

from toys import ArrayTrainer, config, max_abs_diff, weights_of

BATCH = 8


class MeanTarget(keras.metrics.Mean):
    """The mean target of the examples seen: here, the mean batch index."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true)


def batch_indexed(rows=48):
    """Digits features; each example's target is its batch's index (6 batches of 8 for 48 rows)."""
    x = (load_digits().data[:rows] / 16).astype("float32")
    y = (np.arange(rows) // BATCH).astype("float32")[:, None]
    return x, y


def linear():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(1)])


def settings(**overrides):
    return config(**{"batch_size": BATCH, "optimizer.learning_rate": 0.01, **overrides})


def trainer(cfg, rows=48, **kwargs):
    return ArrayTrainer(
        cfg,
        data=batch_indexed(rows),
        model_fn=linear,
        loss=losses.Term(keras.losses.MeanSquaredError(), name="mse"),
        metrics=lambda: [MeanTarget(name="batch")],
        **kwargs,
    )


def read_on_means(spe, epochs, rows=48):
    """Mean batch index per epoch when epoch e reads the pass-cycled steps e*spe .. e*spe + spe - 1."""
    sizes = np.diff(np.minimum(np.arange(0, rows + BATCH, BATCH), rows))
    sizes = sizes[sizes > 0]
    steps = np.arange(epochs * spe).reshape(epochs, spe) % len(sizes)
    return [float(np.sum(s * sizes[s]) / np.sum(sizes[s])) for s in steps]


def keras_fit(spe, epochs, rows=48):
    """Keras' fit on the same data order. Keras ends an epoch early where the data runs out (a
    "ran out of data" warning) and starts the next pass in the next epoch; where `spe` does not
    divide the pass, the Trainer reads on across the pass's end instead, which is Keras' fit of
    the repeated dataset."""
    x, y = batch_indexed(rows)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    passes = -(-rows // BATCH)
    if passes % spe:
        dataset = dataset.repeat()
    model = linear()
    model.compile(
        keras.optimizers.SGD(0.01), keras.losses.MeanSquaredError(), metrics=[MeanTarget(name="batch")]
    )
    history = model.fit(dataset, epochs=epochs, steps_per_epoch=spe, verbose=0)
    return history.history["batch"], weights_of(model)


@pytest.mark.parametrize(
    "spe, epochs, rows",
    [(2, 4, 48), (4, 3, 48), (8, 2, 48), (6, 2, 48), (4, 3, 44)],
    ids=["divides", "mid-pass", "longer-than-a-pass", "one-pass", "partial-last-batch"],
)
def test_epochs_read_on_through_the_data_like_keras_fit(spe, epochs, rows, caplog):
    t = trainer(settings(steps_per_epoch=spe, epochs=epochs), rows)
    with caplog.at_level(logging.INFO, logger="absl"):
        history = t.fit()
    keras_means, keras_weights = keras_fit(spe, epochs, rows)
    means = [h["batch"] for h in history]
    np.testing.assert_allclose(means, read_on_means(spe, epochs, rows), rtol=1e-6)
    np.testing.assert_allclose(means, keras_means, rtol=1e-6)
    assert t.step == spe * epochs
    assert max_abs_diff(weights_of(t.model), keras_weights) <= 1e-6
    notes = [r for r in caplog.records if "an epoch is not a pass" in r.getMessage()]
    if spe == 6:  # an epoch is a pass: nothing to say
        assert not notes
    else:
        assert [r.levelname for r in notes] == ["INFO"]
        assert (
            f"config.steps_per_epoch={spe} and build_train_dataset() yields 6 steps" in notes[0].getMessage()
        )


@pytest.mark.parametrize(("debug", "epochs_run"), [("limit_train_steps", 2), ("overfit_batches", 3)])
def test_debug_limits_still_start_every_epoch_at_the_data_start(debug, epochs_run):
    # limit_train_steps=4 caps the run (two epochs of 2 steps); overfit_batches=4 replays 4 batches.
    history = trainer(settings(steps_per_epoch=2, epochs=3, **{f"debug.{debug}": 4})).fit()
    assert [h["batch"] for h in history] == [0.5] * epochs_run


def test_two_mirrored_replicas_read_on_as_one_device():
    cfg = {"steps_per_epoch": 4, "epochs": 3}
    one = trainer(settings(**cfg), rows=44)
    two = trainer(
        settings(**cfg, **{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2}), rows=44
    )
    history_one, history_two = one.fit(), two.fit()
    np.testing.assert_allclose([h["batch"] for h in history_two], read_on_means(4, 3, 44), rtol=1e-6)
    np.testing.assert_allclose(
        [h["batch"] for h in history_two], [h["batch"] for h in history_one], rtol=1e-6
    )
    assert max_abs_diff(weights_of(one.model), weights_of(two.model)) <= 1e-6


class TermAfter(keras.callbacks.Callback):
    """Sends this process SIGTERM after train batch `at` (0-based within the epoch) of epoch `epoch`."""

    def __init__(self, epoch, at):
        super().__init__()
        self.stop_at, self.epoch = (epoch, at), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "reshuffled"])
def test_a_run_stopped_mid_epoch_resumes_to_the_unbroken_runs_weights(tmp_path, shuffle, caplog):
    """spe=4 over 6 batches: the SIGTERM lands in epoch 2, in the first pass's last batches."""
    cfg = settings(steps_per_epoch=4, epochs=4, steps_per_execution=1)
    unbroken = trainer(cfg, workdir=str(tmp_path / "unbroken"), shuffle=shuffle)
    unbroken.fit()
    stopped = trainer(cfg, workdir=str(tmp_path / "resumed"), shuffle=shuffle)
    with pytest.raises(SystemExit):
        stopped.fit(callbacks=[TermAfter(epoch=1, at=0)])
    assert stopped.step == 5
    resumed = trainer(cfg, workdir=str(tmp_path / "resumed"), shuffle=shuffle)
    with caplog.at_level(logging.INFO, logger="absl"):
        history = resumed.fit()
    # A reshuffling shuffle batched before the cycle's repeat cannot be restored (README, streaming input).
    assert (
        "resumed by replaying 5 batches" if shuffle else "restored the input position of step 5"
    ) in caplog.text
    assert resumed.step == unbroken.step == 16 and len(history) == 3
    for a, b in zip(weights_of(unbroken.model), weights_of(resumed.model)):
        np.testing.assert_array_equal(a, b)


def test_an_input_of_unknown_length_reads_on_without_being_counted(caplog):
    """Its pass length is not needed: it is cycled and read on, never counted."""
    x, y = batch_indexed()
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True).batch(BATCH)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with caplog.at_level(logging.INFO, logger="absl"):
        train = data.DistributedInput(
            strategy, lambda _: unknown, "build_train_dataset", steps_per_epoch=4, read_on=True
        )
    assert train.infinite and train.steps == 4 and train.pass_steps == 0
    assert "yields a finite dataset of unknown length: an epoch is not a pass" in caplog.text
    assert "counted its" not in caplog.text
    iterator = train.iterator(0)
    firsts = [float(next(iterator)[1][0, 0]) for _ in range(8)]  # two epochs: a pass and two batches
    assert firsts == [0, 1, 2, 3, 4, 5, 0, 1]
