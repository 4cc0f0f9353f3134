"""Step-based runs (config.train_steps): against a hand-written loop, Keras fit, and themselves resumed."""

import itertools
import json
import logging
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework import config as config_lib
from framework import data

from toys import ArrayTrainer, blobs, config, mlp, weights_of

X, Y = blobs(n=100)  # 7 batches of 16 per pass, the last one of 4
EVAL = blobs(n=48, seed=5)


def _step_trainer(workdir, train_steps, *, eval_data=EVAL, **overrides):
    options = {"epochs": 0, "train_steps": train_steps, "eval_every_steps": 4, "log_every_steps": 2}
    return ArrayTrainer(
        config(**{**options, **overrides}), data=(X, Y), eval_data=eval_data, model_fn=mlp, shuffle=True,
        workdir=None if workdir is None else str(workdir),
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )  # fmt: skip


def _records(workdir, kind):
    with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _hand_written_loop(steps, batch_size=16, learning_rate=0.1):
    """SGD over the shuffled, repeated pipeline, one update per batch."""
    model = mlp()
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(1000, seed=0, reshuffle_each_iteration=True)
    optimizer = keras.optimizers.SGD(learning_rate)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for x, y in dataset.batch(batch_size).repeat().take(steps):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return weights_of(model)


def _max_diff(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """15 updates in periods of 4, 4, 4, 3 over a 7-batch pass: its weights and workdir."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    trainer = _step_trainer(workdir, 15)
    history = trainer.fit()
    return weights_of(trainer.model), workdir, history, trainer


def test_step_run_equals_a_hand_written_loop_over_the_repeated_dataset(uninterrupted):
    weights, workdir, history, trainer = uninterrupted
    assert trainer.step == 15 and int(trainer.optimizer.iterations) == 15
    assert _max_diff(weights, _hand_written_loop(15)) < 1e-6
    # An evaluation, epoch record and checkpoint at every eval_every_steps and at the end.
    assert [r["step"] for r in _records(workdir, "eval")] == [4, 8, 12, 15]
    assert [r["step"] for r in _records(workdir, "epoch")] == [4, 8, 12, 15]
    assert [r["step"] for r in _records(workdir, "train")] == [2, 4, 6, 8, 10, 12, 14, 15]
    assert len(history) == 4 and all("val/loss" in h for h in history)
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [8, 12, 15]


def test_two_mirrored_replicas_equal_one_device_in_step_mode():
    one = _step_trainer(None, 9, eval_data=None, steps_per_execution=3)
    one.fit()
    two = _step_trainer(
        None, 9, eval_data=None, steps_per_execution=3,
        **{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2},
    )  # fmt: skip
    two.fit()
    assert two.strategy.num_replicas_in_sync == 2
    assert _max_diff(weights_of(one.model), weights_of(two.model)) < 1e-5
    assert _max_diff(weights_of(two.model), _hand_written_loop(9)) < 1e-5


def test_a_shorter_run_then_raising_train_steps_continues_exactly(uninterrupted, tmp_path):
    weights, reference, _, _ = uninterrupted
    first = _step_trainer(tmp_path, 7)  # ends inside the period [4, 8)
    assert len(first.fit()) == 2 and first.step == 7
    again = _step_trainer(tmp_path, 7)
    assert again.fit() == [] and again.step == 7  # a finished run: nothing to train
    assert _max_diff(weights_of(again.model), weights_of(first.model)) == 0
    assert [r["step"] for r in _records(tmp_path, "epoch")] == [4, 7]
    longer = _step_trainer(tmp_path, 15)
    history = longer.fit()
    assert longer.resumed_at_step == 7 and len(history) == 3
    assert _max_diff(weights_of(longer.model), weights) == 0
    # The period [4, 8) goes on from step 7: its logs and metrics cover all its steps.
    want = {r["step"]: r for r in _records(reference, "epoch")}
    for record in _records(tmp_path, "epoch")[2:]:
        expected = want[record["step"]]
        for key in ("loss", "acc", "val/loss", "val/acc"):
            assert record[key] == pytest.approx(expected[key], abs=1e-6), (record["step"], key)


def test_sigterm_mid_period_then_rerun_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    weights, reference, _, _ = uninterrupted
    kill = framework.Periodic(lambda t, step, logs: os.kill(os.getpid(), signal.SIGTERM), every_steps=6)
    interrupted = _step_trainer(tmp_path, 15)
    with pytest.raises(SystemExit) as exit_info:
        interrupted.fit(callbacks=[kill])
    assert exit_info.value.code == 0 and interrupted.step == 6
    resumed = _step_trainer(tmp_path, 15)
    resumed.fit()
    assert resumed.resumed_at_step == 6 and resumed.step == 15
    assert _max_diff(weights_of(resumed.model), weights) == 0
    last = _records(tmp_path, "epoch")[-1]
    assert last["loss"] == pytest.approx(_records(reference, "epoch")[-1]["loss"], abs=1e-6)


def test_eval_boundaries_drive_keras_callbacks_like_fit_with_steps_per_epoch():
    """EarlyStopping and ReduceLROnPlateau on val_loss at each eval boundary, as Keras fit does per epoch."""
    period, periods = 3, 8

    def callbacks():
        return [
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, min_delta=0.02),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, min_delta=0.02),
        ]

    ours_cbs = callbacks()
    ours = _step_trainer(
        None, period * periods, eval_every_steps=period, log_every_steps=100,
        **{"optimizer.learning_rate": 0.3},
    )  # fmt: skip
    ours.shuffle = False  # Keras fit draws another iterator at each epoch end: keep one order
    history = ours.fit(callbacks=ours_cbs)

    model = mlp()
    model.compile(keras.optimizers.SGD(0.3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16).repeat()
    keras_cbs = callbacks()
    fitted = model.fit(
        train, steps_per_epoch=period, epochs=periods, validation_data=tf.data.Dataset.from_tensor_slices(EVAL).batch(16),
        callbacks=keras_cbs, verbose=0,
    )  # fmt: skip
    assert 2 <= len(fitted.history["val_loss"]) < periods, "the case should stop early"
    assert min(fitted.history["learning_rate"]) < 0.3, "the case should reduce the rate"
    assert len(history) == len(fitted.history["val_loss"])
    assert keras_cbs[1].stopped_epoch == ours_cbs[1].stopped_epoch
    np.testing.assert_allclose([h["val/loss"] for h in history], fitted.history["val_loss"], atol=1e-5)
    np.testing.assert_allclose([h["lr"] for h in history], fitted.history["learning_rate"], atol=1e-7)
    assert _max_diff(weights_of(ours.model), weights_of(model)) < 1e-5


def test_the_default_schedule_spans_train_steps_and_a_longer_rerun_says_it_stretches(tmp_path, caplog):
    options = {"optimizer.schedule": "cosine", "log_every_steps": 1, "eval_every_steps": 0}
    first = _step_trainer(tmp_path, 6, eval_data=None, **options)
    with caplog.at_level(logging.INFO, logger="absl"):
        first.fit()
    assert "step 3/6 | loss=" in caplog.text and "step 6/6: period done" in caplog.text
    cosine = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=6)
    for record in _records(tmp_path, "train"):
        assert record["lr"] == pytest.approx(float(cosine(record["step"])), abs=1e-7)
    with caplog.at_level(logging.WARNING):
        _step_trainer(tmp_path, 10, eval_data=None, **options).fit()
    assert "config.train_steps changed from 6 to 10" in caplog.text
    assert "now spans 10 updates instead of 6" in caplog.text
    longer = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
    for record in _records(tmp_path, "train")[6:]:
        assert record["lr"] == pytest.approx(float(longer(record["step"])), abs=1e-7)


def test_gradient_accumulation_counts_train_steps_in_updates():
    trainer = _step_trainer(None, 5, eval_data=None, grad_accum_steps=2, eval_every_steps=2)
    history = trainer.fit()
    assert int(trainer.optimizer.iterations) == 5 and trainer.step == 10 and len(history) == 3


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        ({"train_steps": 100, "steps_per_epoch": 50}, "config.steps_per_epoch=50 and config.train_steps=100"),
        ({"train_steps": 100, "eval_every_epochs": 2}, "config.eval_every_epochs=2"),
        ({"train_steps": 100, "checkpoint": {"every_epochs": 0}}, "config.checkpoint.every_epochs=0"),
        ({"eval_every_steps": 10}, "config.eval_every_steps=10 needs a step-based run"),
        ({"train_steps": -1}, "config.train_steps=-1"),
    ],
)
def test_epoch_and_step_keys_together_fail_naming_both(overrides, culprit):
    with pytest.raises(config_lib.ConfigError, match=culprit.replace(".", r"\.")):
        config_lib.resolve(overrides)


def test_step_mode_keys_leave_epoch_defaults_alone():
    resolved = config_lib.resolve({"train_steps": 100, "eval_every_steps": 10, "epochs": 0})
    assert resolved.train_steps == 100
    config_lib.resolve({"train_steps": 100})  # epochs at its default: unused, not an error


def test_a_cycled_pass_ends_its_partial_step_in_a_call_of_its_own():
    def hook(input_context):
        return tf.data.Dataset.from_tensor_slices(X).batch(16)  # 7 batches, the last one partial

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    cycled = data.DistributedInput(strategy, hook, "build_train_dataset", steps_per_epoch=10, cycle=True)
    assert cycled.infinite and cycled.pass_steps == 7 and cycled.steps == 10
    calls, step = [], 0
    for _ in range(3):  # three periods of 10 steps
        done = 0
        while done < 10:
            n = cycled.call_sizes(done, 4, step=step)
            calls.append(range(step, step + n))
            done, step = done + n, step + n
    partial = [c for c in calls if any(s % 7 == 6 for s in c)]
    assert partial and all(len(c) == 1 for c in partial)
    assert sum(len(c) for c in calls) == 30 and max(len(c) for c in calls) == 4
    # The dataset repeats: its 8th batch is the first of the next pass, a full one.
    batches = [int(tf.shape(b)[0]) for b in itertools.islice(iter(cycled.dataset), 8)]
    assert batches == [16] * 6 + [4, 16]
