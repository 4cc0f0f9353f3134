"""After training: a finished run's state for evaluate / predict / export, from_workdir, config.load.

The oracle is what the training run logged (metrics.jsonl) and Keras' own
`evaluate` / `predict` on the trained model's weights.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from two_heads import CE, TwoHeads, examples, get_config, keras_model

import framework

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL = examples(40, seed=2)


def _config(**overrides):
    config = get_config()
    config.distribution.cpu_devices = 2  # trained on 2 replicas; evaluated on 1 by from_workdir
    config.checkpoint.max_to_keep = 10
    config.checkpoint.best_metric = "val/loss"
    config.checkpoint.best_mode = "max"  # the worst evaluation ranks first: "best" is not the latest
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-headed run: its workdir, its trainer and its evaluation records by step."""
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer = TwoHeads(_config(), workdir=workdir)
    trainer.fit()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = {
        r["step"]: {k[4:]: v for k, v in r.items() if k.startswith("val/")}
        for r in records
        if r["kind"] == "eval"
    }
    return workdir, trainer, evals


def _close(got, want, rtol=1e-5):
    assert set(got) == set(want), (sorted(got), sorted(want))
    np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)], rtol=rtol)


def _keras_evaluate(weights):
    """Keras' evaluate of the same model with `weights` on the eval set, keyed like the framework's logs."""
    model = keras_model(16)
    model.set_weights(weights)
    model.compile(
        loss={"cls": CE, "reg": keras.losses.MeanSquaredError()},
        metrics={"cls": [keras.metrics.SparseCategoricalAccuracy(name="acc")],
                 "reg": [keras.metrics.MeanAbsoluteError(name="mae")]},
    )  # fmt: skip
    got = model.evaluate(EVAL[0], EVAL[1], batch_size=16, return_dict=True, verbose=0)
    return {"loss": got["loss"], "cls/acc": got["cls_acc"], "reg/mae": got["reg_mae"]}


def test_a_new_trainer_evaluates_the_runs_latest_checkpoint(run, caplog):
    workdir, trained, evals = run
    last = max(evals)
    fresh = TwoHeads(_config(), workdir=workdir)
    with caplog.at_level(logging.INFO, logger="absl"):
        results = fresh.evaluate()
    assert f"Starting from the latest checkpoint of {workdir}: step {last}." in caplog.text
    _close(results, evals[last])
    keras_results = _keras_evaluate(trained.model.get_weights())
    _close({k: results[k] for k in keras_results}, keras_results)


def test_from_workdir_best_and_a_step_evaluate_as_the_run_logged_them(run):
    workdir, _, evals = run
    best = max(evals, key=lambda step: evals[step]["loss"])
    assert best != max(evals)
    trainer = TwoHeads.from_workdir(workdir, which="best")
    assert trainer.step == best
    assert trainer.strategy.num_replicas_in_sync == 1  # this process's devices, not the run's two
    _close(trainer.evaluate(tf.data.Dataset.from_tensor_slices(EVAL).batch(16)), evals[best])
    earlier = min(evals)
    trainer = TwoHeads.from_workdir(workdir, which=earlier)
    assert trainer.step == earlier
    _close(trainer.evaluate(), evals[earlier])


def test_predict_on_a_new_trainer_is_keras_predict_of_the_trained_model(run):
    workdir, trained, _ = run
    got = TwoHeads(_config(), workdir=workdir).predict(tf.data.Dataset.from_tensor_slices(EVAL[0]).batch(7))
    want = trained.model.predict(EVAL[0], verbose=0)
    for head in ("cls", "reg"):
        np.testing.assert_allclose(got[head], want[head], rtol=1e-5, atol=1e-6)


def test_restore_with_only_a_training_dataset(run):
    workdir, trained, evals = run
    trainer = TwoHeads(_config(), workdir=workdir, with_eval=False)
    assert trainer.restore("latest") == max(evals)
    for got, want in zip(trainer.model.get_weights(), trained.model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_config_load_returns_the_runs_config(run, tmp_path):
    workdir, trained, _ = run
    assert framework.config.load(workdir) == trained.config
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/config.json does not exist"):
        framework.config.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/nothing is not a directory"):
        TwoHeads.from_workdir(str(tmp_path / "nothing"))


def test_best_without_a_best_metric_names_the_metrics_and_the_key(run):
    workdir, _, evals = run
    with pytest.raises(ValueError) as error:
        TwoHeads.from_workdir(workdir, which="best", overrides={"checkpoint.best_metric": ""})
    message = str(error.value)
    assert "did not set config.checkpoint.best_metric" in message
    assert f"saved: {', '.join(map(str, sorted(evals)))}" in message
    assert "the run logged val/cls/acc, val/loss, val/loss/ce, val/loss/reg, val/reg/mae." in message


def test_a_frozen_encoder_inside_the_model_is_not_reported_as_left_out(caplog):
    class FrozenEncoder(TwoHeads):
        def build_model(self):
            self.encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
            self.encoder.trainable = False
            self.outside = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
            self.outside.trainable = False
            x = keras.Input((6,))
            h = self.encoder(x)
            return keras.Model(x, {"cls": keras.layers.Dense(3)(h), "reg": keras.layers.Dense(1)(h)})

    trainer = FrozenEncoder(get_config())
    with caplog.at_level(logging.INFO, logger="absl"):
        groups = trainer.checkpoint_state()
    saved = {id(v) for v in groups["model"]}
    assert all(id(v) in saved for v in trainer.encoder.variables)
    assert "Not checkpointed: outside (frozen: no trainable weights)." in caplog.text
    assert "encoder" not in caplog.text


def _train_records(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"kind": "train"' in line)


def test_a_preemption_save_logs_no_orbax_metrics_warning(tmp_path):
    script = os.path.join(ROOT, "tests", "two_heads.py")
    workdir, log = tmp_path / "run", tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, script, f"--config={script}", f"--workdir={workdir}", "--config.epochs=1000",
             "--config.steps_per_execution=1", "--config.log_every_steps=1",
             "--config.checkpoint.best_metric=val/loss", "--config.checkpoint.every_epochs=0"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while _train_records(workdir / "metrics.jsonl") < 3 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    text = log.read_text()
    assert "Preempted: saved step" in text, text[-3000:]
    assert "tracked_metric" not in text


def test_a_dataset_made_before_the_trainer(run, tmp_path):
    """TensorFlow then has one logical CPU: cpu_devices=2 fails naming the fix; from_workdir runs here."""
    workdir, _, evals = run
    code = f"""
import json, tensorflow as tf
from two_heads import TwoHeads, examples, get_config
test_ds = tf.data.Dataset.from_tensor_slices(examples(40, seed=2)).batch(16)
config = get_config()
config.distribution.cpu_devices = 2
try:
    TwoHeads(config)
except RuntimeError as e:
    print("ERROR", e)
print("RESULTS", json.dumps(TwoHeads.from_workdir({workdir!r}).evaluate(test_ds)))
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.path.join(ROOT, 'tests')}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("ERROR", "RESULTS"))
    )
    assert "build datasets after it, or call framework.distribute.configure_cpu_devices(2)" in lines["ERROR"]
    _close(json.loads(lines["RESULTS"]), evals[max(evals)])


def test_fit_after_a_restore_resumes_and_saves(tmp_path):
    """restore() opens the checkpoints read-only; a fit() after it must still write its own."""
    TwoHeads(get_config(), workdir=str(tmp_path)).fit()  # 4 epochs of 6 steps
    longer = get_config()
    longer.epochs = 5
    trainer = TwoHeads(longer, workdir=str(tmp_path))
    assert trainer.restore(12) == 12
    trainer.fit()
    steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert steps[-1] == 30 and trainer.step == 30
