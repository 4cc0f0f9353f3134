"""Keras callbacks, periodic hooks, optimizer config, EMA, NaN policies, profiler, debug runs."""

import csv
import glob

import keras
import numpy as np
import pytest

import framework

from toys import ArrayTrainer, ExampleCount, blobs, config, max_abs_diff, mlp, weights_of


def make(cfg=None, *, n=96, eval_n=48, workdir=None, data=None, **kwargs):
    x, y = data if data is not None else blobs(n=n)
    ex, ey = blobs(n=eval_n, seed=9)
    return ArrayTrainer(
        cfg or config(epochs=3), data=(x, y), eval_data=(ex, ey) if eval_n else None, model_fn=mlp,
        workdir=None if workdir is None else str(workdir), **kwargs,
    )  # fmt: skip


# ---- callbacks and hooks --------------------------------------------------------


def test_early_stopping_on_val_loss_stops_and_restores_best_weights():
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", min_delta=10.0, patience=1, restore_best_weights=True
    )
    trainer = make(config(epochs=5))
    history = trainer.fit(callbacks=[stop])
    assert len(history) == 2 and trainer.epoch == 2  # no improvement of 10 after epoch 1
    one_epoch = make(config(epochs=1))
    one_epoch.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(one_epoch.model)) == 0.0


def test_reduce_lr_on_plateau_changes_the_rate_the_step_reads():
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    trainer = make(config(epochs=3))
    history = trainer.fit(callbacks=[plateau])
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.05])
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.025)
    plain = make(config(epochs=3))
    plain.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(plain.model)) > 1e-4


def test_csv_logger_lambda_callback_and_periodic_hooks(tmp_path):
    seen_epochs, hook_steps = [], []
    trainer = make(config(epochs=3, log_every_steps=100))
    path = str(tmp_path / "log.csv")
    trainer.fit(
        callbacks=[
            keras.callbacks.CSVLogger(path),
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: seen_epochs.append((e, sorted(logs)))
            ),
            framework.Periodic(lambda t, step, logs: hook_steps.append((step, t.step)), every_steps=4),
        ]
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and "val_loss" in rows[0]
    assert [e for e, _ in seen_epochs] == [0, 1, 2] and "val_loss" in seen_epochs[0][1]
    assert hook_steps == [(s, s) for s in range(4, 19, 4)]  # every 4 steps, exactly on the step


def test_terminate_on_nan_with_skip_policy_and_build_callbacks():
    x, y = blobs(n=96)
    x[40] = np.nan

    class WithCallbacks(ArrayTrainer):
        def build_callbacks(self):
            return [keras.callbacks.TerminateOnNaN()]

    trainer = WithCallbacks(config(epochs=3, nan_policy="skip"), data=(x, y), model_fn=mlp)
    history = trainer.fit()
    assert trainer.model.stop_training and len(history) == 1 and trainer.step < 6


# ---- optimizer from config ---------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion", "rmsprop"])
def test_any_keras_optimizer_by_name(name):
    trainer = make(config(epochs=1, **{"optimizer.name": name, "optimizer.learning_rate": 1e-3}))
    assert type(trainer.optimizer).__name__.lower() == name
    assert np.isfinite(trainer.fit()[-1]["loss"])


def test_warmup_cosine_schedule_follows_keras_and_is_logged(tmp_path):
    cfg = config(
        epochs=2, log_every_steps=2, **{"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 4}
    )
    trainer = make(cfg, workdir=tmp_path)
    trainer.fit()
    total = 2 * 6
    reference = keras.optimizers.schedules.CosineDecay(0.0, total - 4, warmup_target=0.1, warmup_steps=4)
    import json

    with open(tmp_path / "metrics.jsonl") as f:
        points = [json.loads(line) for line in f if '"kind": "train"' in line]
    for record in points:
        assert record["lr"] == pytest.approx(float(reference(record["step"])), rel=1e-5)
    assert points[1]["lr"] == pytest.approx(0.1)  # the peak after 4 warm-up updates


def test_weight_decay_zero_turns_adamw_decay_off_and_unset_keeps_keras_default():
    unset = framework.optim.optimizer_builder.build(config(**{"optimizer.name": "adamw"}).optimizer)
    assert unset.weight_decay == pytest.approx(keras.optimizers.AdamW().weight_decay)
    zero = framework.optim.optimizer_builder.build(
        config(**{"optimizer.name": "adamw", "optimizer.weight_decay": 0}).optimizer
    )
    assert zero.weight_decay == 0.0
    # With no decay, AdamW's update is Adam's (an independent reference).
    var, ref = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(3, "float32"))
    grad = np.array([0.1, -0.2, 0.3], "float32")
    zero.apply([grad], [var])
    keras.optimizers.Adam(float(zero.learning_rate)).apply([grad], [ref])
    np.testing.assert_allclose(var.numpy(), ref.numpy(), rtol=0, atol=1e-7)


def test_piecewise_schedule_weight_decay_options_and_bad_values():
    cfg = config(epochs=1, **{"optimizer.name": "adamw", "optimizer.schedule": "piecewise",
                              "optimizer.boundaries": (3,), "optimizer.rates": (0.1, 0.01),
                              "optimizer.weight_decay": 0.05})  # fmt: skip
    trainer = make(cfg)
    trainer.fit()
    assert trainer.optimizer.weight_decay == pytest.approx(0.05)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.01)
    sgd = config(**{"optimizer.name": "sgd"})
    sgd.optimizer.options.momentum = 0.9
    assert make(sgd).optimizer.momentum == pytest.approx(0.9)
    with pytest.raises(framework.config.ConfigError, match="len\\(rates\\) == len\\(boundaries\\) \\+ 1"):
        make(
            config(
                **{"optimizer.schedule": "piecewise", "optimizer.boundaries": (3,), "optimizer.rates": (0.1,)}
            )
        )


def test_ema_weights_for_evaluation_raw_weights_for_training():
    trainer = make(config(epochs=2, **{"optimizer.ema": 0.9}))
    trainer.fit()
    raw = weights_of(trainer.model)
    inner = trainer.optimizer
    averages = [np.asarray(a) for a in inner._model_variables_moving_average]
    assert max_abs_diff(raw, averages) > 1e-4
    logs = trainer.evaluate()
    assert max_abs_diff(weights_of(trainer.model), raw) == 0.0  # raw weights are back
    ex, ey = blobs(n=48, seed=9)
    reference = mlp()
    reference.set_weights(averages)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(ey, reference(ex))
    batches = [np.mean(ce[i : i + 16]) for i in range(0, 48, 16)]
    assert logs["loss"] == pytest.approx(np.mean(batches), rel=1e-5)


# ---- NaN policies ------------------------------------------------------------------------


def _nan_data(bad_batches, n=96):
    x, y = blobs(n=n)
    for b in bad_batches:
        x[b * 16 + 3, 1] = np.nan
    return x, y


def test_skip_policy_drops_the_update_and_counts_it():
    trainer = make(config(epochs=1, nan_policy="skip"), data=_nan_data([2]), eval_n=0)
    history = trainer.fit()
    assert history[0]["nonfinite_steps"] == 1.0 and np.isfinite(history[0]["loss"])
    x, y = blobs(n=96)
    keep = np.r_[0:32, 48:96]  # the same data without batch 2 (steps are SGD, unshuffled)
    reference = make(config(epochs=1), data=(x[keep], y[keep]), eval_n=0)
    expected = reference.fit()[0]
    assert max_abs_diff(weights_of(trainer.model), weights_of(reference.model)) <= 1e-6
    assert history[0]["loss"] == pytest.approx(expected["loss"], rel=1e-6)  # the skipped step left out


def test_restore_policy_reloads_the_last_checkpoint_and_goes_on_after_the_batch(tmp_path, caplog):
    cfg = config(epochs=1, nan_policy="restore", **{"checkpoint.every_steps": 2})
    trainer = make(cfg, data=_nan_data([2]), eval_n=0, workdir=tmp_path)
    trainer.fit()
    assert "restored checkpoint 2" in caplog.text and trainer.step == 6
    x, y = blobs(n=96)
    keep = np.r_[0:32, 48:96]  # steps 1-2, the restore to step 2, then batches 4-6
    reference = make(config(epochs=1), data=(x[keep], y[keep]), eval_n=0)
    reference.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(reference.model)) <= 1e-6


def test_restore_policy_leaves_a_call_ending_on_the_offending_step_out_of_the_means(tmp_path):
    cfg = config(epochs=1, nan_policy="restore", **{"checkpoint.every_steps": 2})
    trainer = make(cfg, data=_nan_data([3]), eval_n=0, workdir=tmp_path)  # step 4 ends the call of steps 3-4
    history = trainer.fit()
    assert trainer.step == 6 and np.isfinite(history[0]["loss"])


def test_restore_policy_gives_up_after_max_retries(tmp_path):
    cfg = config(epochs=1, nan_policy="restore", nan_max_retries=2)
    trainer = make(cfg, data=_nan_data([1, 2, 3, 4]), eval_n=0, workdir=tmp_path)
    with pytest.raises(FloatingPointError, match="Non-finite loss at step 4: .*Gave up after 2 restores"):
        trainer.fit()


# ---- profiler and debug runs --------------------------------------------------------------


def test_profiler_writes_a_trace_of_the_steps(tmp_path):
    trainer = make(config(epochs=1, profile_steps=(2, 3)), workdir=tmp_path)
    trainer.fit()
    assert glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))


def test_fast_dev_run_limits_and_writes_no_checkpoints(tmp_path):
    trainer = make(
        config(epochs=5, **{"debug.fast_dev_run": 2}), workdir=tmp_path, metrics=lambda: [ExampleCount()]
    )
    history = trainer.fit()
    assert len(history) == 1 and trainer.step == 2
    assert history[0]["count"] == 32 and history[0]["val/count"] == 32
    assert not (tmp_path / "checkpoints").exists()


def test_limit_train_and_eval_steps():
    cfg = config(epochs=2, **{"debug.limit_train_steps": 4, "debug.limit_eval_steps": 1})
    trainer = make(cfg, metrics=lambda: [ExampleCount()])
    history = trainer.fit()  # the run's 4 steps, in its first epoch
    assert trainer.step == 4 and len(history) == 1
    assert history[-1]["count"] == 64 and history[-1]["val/count"] == 16


def test_overfit_batches_drives_the_loss_to_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 6)).astype("float32")
    y = rng.integers(0, 3, 320).astype("int32")  # random labels: only memorizing fits them
    cfg = config(
        epochs=150, **{"debug.overfit_batches": 2, "optimizer.name": "adam", "optimizer.learning_rate": 0.01}
    )
    trainer = ArrayTrainer(cfg, data=(x, y), model_fn=lambda: mlp(hidden=64), shuffle=True)
    history = trainer.fit()
    assert trainer.step == 300
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]


def test_deterministic_runs_are_bitwise_equal():
    def run():
        def model_fn():
            keras.utils.set_random_seed(0)
            return keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, activation="relu"),
                                     keras.layers.Dropout(0.3), keras.layers.Dense(3)])  # fmt: skip

        cfg = config(epochs=3, deterministic=True, **{"optimizer.name": "adam"})
        trainer = ArrayTrainer(cfg, data=blobs(n=96), model_fn=model_fn, shuffle=True)
        trainer.fit()
        return weights_of(trainer.model)

    first, second = run(), run()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_a_run_stopped_early_is_finished_for_a_rerun(tmp_path):
    def stop():
        return keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)

    first = make(config(epochs=6), workdir=tmp_path)
    assert len(first.fit(callbacks=[stop()])) == 2
    again = make(config(epochs=6), workdir=tmp_path)
    assert again.fit(callbacks=[stop()]) == [] and again.epoch == 2 and again.step == first.step
