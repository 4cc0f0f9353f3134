"""The foundation: Keras-fit equivalence, replica equality, metric resets, traces, logs."""

import json
import os

import keras
import numpy as np
import pytest

from toys import ArrayTrainer, ExampleCount, blobs, config, max_abs_diff, mlp, weights_of


def test_fit_matches_keras_fit_with_sgd():
    x, y = blobs(n=100)  # 100 = 6 full batches of 16 + a partial batch of 4
    reference = mlp()
    initial = weights_of(reference)
    reference.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    reference.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)

    def model_fn():
        model = mlp()
        model.set_weights(initial)
        return model

    trainer = ArrayTrainer(config(epochs=3), data=(x, y), model_fn=model_fn)
    trainer.fit()
    assert trainer.step == 3 * 7
    assert (
        max_abs_diff(
            weights_of(trainer.model),
            weights_of(reference),
        )
        <= 1e-4
    )
    # Training moved the weights: the comparison is not between two untouched copies.
    assert max_abs_diff(weights_of(reference), initial) > 1e-2


def _train_on(cpu_devices, strategy, **cfg):
    x, y = blobs(n=64)
    trainer = ArrayTrainer(
        config(**{"distribution.strategy": strategy, "distribution.cpu_devices": cpu_devices, **cfg}),
        data=(x, y),
        model_fn=mlp,
    )
    history = trainer.fit()
    return trainer, history


def test_one_and_two_replicas_reach_the_same_weights():
    one, h1 = _train_on(0, "one_device", epochs=2)
    two, h2 = _train_on(2, "mirrored", epochs=2)
    assert two.strategy.num_replicas_in_sync == 2
    assert max_abs_diff(weights_of(one.model), weights_of(two.model)) <= 2e-6
    assert h1[-1]["loss"] == pytest.approx(h2[-1]["loss"], abs=1e-6)


@pytest.mark.parametrize("replicas", [1, 2])
def test_metrics_reset_every_epoch_and_every_evaluation(replicas):
    x, y = blobs(n=50)
    ex, ey = blobs(n=30, seed=1)
    strategy = "mirrored" if replicas > 1 else "one_device"
    trainer = ArrayTrainer(
        config(
            epochs=3,
            **{
                "distribution.strategy": strategy,
                "distribution.cpu_devices": replicas if replicas > 1 else 0,
            },
        ),
        data=(x, y),
        eval_data=(ex, ey),
        model_fn=mlp,
        metrics=lambda: [ExampleCount()],
    )
    history = trainer.fit()
    assert [h["count"] for h in history] == [50.0] * 3
    assert [h["val/count"] for h in history] == [30.0] * 3
    assert trainer.evaluate()["count"] == 30.0


def test_train_function_traced_once_across_epochs_and_partial_groups():
    x, y = blobs(n=100)  # 7 steps per epoch; groups of 4 leave a short group of 3
    trainer = ArrayTrainer(config(epochs=3, steps_per_execution=4), data=(x, y), model_fn=mlp)
    trainer.fit()
    assert trainer.step == 21
    assert trainer.controller.train_fn.experimental_get_tracing_count() == 1


def test_accuracy_metric_matches_numpy_on_eval():
    x, y = blobs(n=64)
    ex, ey = blobs(n=40, seed=2)
    trainer = ArrayTrainer(
        config(epochs=2),
        data=(x, y),
        eval_data=(ex, ey),
        model_fn=mlp,
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    trainer.fit()
    logs = trainer.evaluate()
    logits = trainer.model.predict(ex, verbose=0)
    assert logs["acc"] == pytest.approx(np.mean(np.argmax(logits, -1) == ey), abs=1e-6)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(ey, logits)
    assert logs["loss"] == pytest.approx(np.mean(ce), rel=1e-5)  # over examples, not batches


def test_run_outputs(tmp_path):
    x, y = blobs(n=64)
    ex, ey = blobs(n=32, seed=3)
    workdir = str(tmp_path / "run")
    trainer = ArrayTrainer(
        config(epochs=2, log_every_steps=2),
        data=(x, y),
        eval_data=(ex, ey),
        model_fn=mlp,
        workdir=workdir,
    )
    history = trainer.fit()
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["batch_size"] == 16
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert all("loss" in r and "steps_per_sec" in r and "loss/ce" not in r for r in train)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[-1]["val/loss"] == pytest.approx(history[-1]["val/loss"])
    # Epoch means are the mean of the step losses in that epoch.
    assert epochs[0]["loss"] == pytest.approx(np.mean([r["loss"] for r in train[:2]]), rel=1e-6)
    for split in ("train", "eval"):
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(workdir, split)))


def test_a_loss_without_per_example_terms_trains_alike_on_one_and_two_replicas():
    from framework import losses

    results = []
    for strategy in ({}, {"distribution.strategy": "mirrored", "distribution.cpu_devices": 2}):
        trainer = ArrayTrainer(config(**strategy), data=blobs(n=64), model_fn=mlp, loss=losses.L2(1e-2))
        trainer.fit()  # biases get no gradient at all; nothing to all-reduce for the data terms
        results.append(weights_of(trainer.model))
    assert max_abs_diff(*results) <= 1e-7
    assert max_abs_diff(results[0], weights_of(mlp())) > 0  # the kernels did shrink
