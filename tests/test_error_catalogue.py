"""The error catalogue: each kind of bad input, the message it gets, and nothing lost.

Every failure names its culprit; nothing is trained on NaN; input errors fail
before training starts and leave the workdir as it was.
"""

import importlib
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import framework
from framework import losses
from framework.checkpointing.checkpoint import CheckpointMismatch
from framework.config import ConfigError

from toys import ArrayTrainer, blobs, config, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_head_model():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3)(hidden), "reg": keras.layers.Dense(1)(hidden)})


CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_build_model_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_model\(\) must return a keras.Model, got list"):
        ArrayTrainer(config(), data=blobs(), model_fn=lambda: [mlp()])


def test_build_loss_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_loss\(\) must return a framework.losses.Loss"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, loss=CE)


def test_build_metrics_wrong_type_names_the_hook():
    with pytest.raises(TypeError, match=r"build_metrics\(\) must return keras.metrics.Metric objects"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, metrics=lambda: ["accuracy"])


def test_build_train_dataset_wrong_type_names_the_hook():
    class NumpyData(ArrayTrainer):
        def build_train_dataset(self, input_context):
            return self.data

    trainer = NumpyData(config(), data=blobs(), model_fn=mlp)
    with pytest.raises(TypeError, match=r"build_train_dataset\(\) must return a tf.data.Dataset, got tuple"):
        trainer.fit()


def test_loss_on_a_head_the_model_lacks_names_both():
    loss = losses.Term(CE).on("class")
    with pytest.raises(KeyError, match=r"reads head 'class', but the model's heads are \['cls', 'reg'\]"):
        ArrayTrainer(config(), data=blobs(), model_fn=two_head_model, loss=loss)


def _two_head_data(y_keys):
    x, y = blobs()
    labels = {"cls": y, "reg": x[:, :1]}
    return x, {k: labels[k] for k in y_keys}


def test_batch_missing_a_head_names_it():
    loss = losses.Term(CE).on("cls") + losses.Term(keras.losses.MeanSquaredError()).on("reg")
    trainer = ArrayTrainer(config(), data=_two_head_data(["cls"]), model_fn=two_head_model, loss=loss)
    with pytest.raises(ValueError, match=r"no labels for head 'reg'"):
        trainer.fit()


def test_batch_with_an_unknown_head_names_it():
    x, y = blobs()
    data = (x, {"cls": y, "reg": x[:, :1], "depth": x[:, :1]})
    loss = losses.Term(CE).on("cls")
    trainer = ArrayTrainer(config(), data=data, model_fn=two_head_model, loss=loss)
    with pytest.raises(ValueError, match=r"labels for head 'depth', which the model does not have"):
        trainer.fit()


def test_single_label_for_a_multi_head_model_names_the_heads():
    loss = losses.Term(CE).on("cls")
    trainer = ArrayTrainer(config(), data=blobs(), model_fn=two_head_model, loss=loss)
    with pytest.raises(
        ValueError, match=r"model has heads \['cls', 'reg'\] but the batch labels are a single"
    ):
        trainer.fit()


def test_shape_mismatch_names_term_and_head():
    x, y = blobs()
    data = (x, {"cls": y, "reg": np.ones((len(x), 3), "float32")})
    loss = losses.Term(CE).on("cls") + losses.Term(keras.losses.MeanSquaredError(), name="mse").on("reg")
    trainer = ArrayTrainer(config(), data=data, model_fn=two_head_model, loss=loss)
    with pytest.raises(
        ValueError,
        match=r"Loss term .mse. on head .reg.: labels of shape \(None, 3\) do not match predictions of shape \(None, 1\)",
    ):
        trainer.fit()


def test_non_finite_loss_stops_at_the_step_and_names_the_term():
    x, y = blobs(n=96)
    x[40, 2] = np.nan  # example 40 is in the third batch of 16
    loss = losses.Term(CE, name="ce") + losses.L2(1e-3)
    trainer = ArrayTrainer(config(epochs=2, steps_per_execution=8), data=(x, y), model_fn=mlp, loss=loss)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss at step 3: .*loss/ce=nan") as info:
        trainer.fit()
    assert "loss/l2=" not in str(info.value)  # the regularizer stayed finite
    weights = trainer.model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    # The weights are those after step 2: replay two steps on a fresh trainer.
    clean = ArrayTrainer(config(epochs=1, steps_per_epoch=2), data=(x[:32], y[:32]), model_fn=mlp, loss=loss)
    clean.fit()
    for a, b in zip(weights, clean.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_loss_under_two_replicas_skips_everywhere():
    x, y = blobs(n=64)
    x[24, 0] = np.inf  # second global batch, second replica's half
    trainer = ArrayTrainer(
        config(**{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2}),
        data=(x, y),
        model_fn=mlp,
    )
    with pytest.raises(FloatingPointError, match=r"Non-finite gradients at step 2 \(the loss was finite\)"):
        trainer.fit()
    for v in trainer.model.trainable_variables:
        values = trainer.strategy.experimental_local_results(v.value)
        assert all(np.all(np.isfinite(np.asarray(r))) for r in values)
        np.testing.assert_array_equal(np.asarray(values[0]), np.asarray(values[1]))


def test_schedule_returning_a_vector_names_the_term():
    loss = losses.Term(CE, name="ce", weight=lambda step: tf.ones([2]))
    trainer = ArrayTrainer(config(), data=blobs(), model_fn=mlp, loss=loss)
    with pytest.raises(ValueError, match=r"Loss term 'ce': its weight schedule returned shape \(2,\)"):
        trainer.fit()


# ---- before any work: each names the culprit and leaves the workdir as it was ------------


def _snapshot(path):
    if not os.path.exists(path):
        return None
    return sorted(
        (os.path.relpath(os.path.join(r, f), path), os.path.getmtime(os.path.join(r, f)))
        for r, _, fs in os.walk(path)
        for f in fs
    )


class Structured(ArrayTrainer):
    """Yields whatever `self.batches` makes of the arrays."""

    def build_train_dataset(self, input_context):
        return self.batches(tf.data.Dataset.from_tensor_slices(self.data)).batch(16)


@pytest.mark.parametrize(
    "batches, message",
    [
        (
            lambda ds: ds.map(lambda x, y: x),
            r"yields batches shaped like float32\(None, 6\); the default train_step expects \(x, y\)",
        ),
        (lambda ds: ds.map(lambda x, y: (x, y, x, y)), r"expects \(x, y\) or \(x, y, sample_weight\)"),
        (lambda ds: ds.map(lambda x, y: (x, tf.strings.as_string(y))), r"yields y of dtype string"),
    ],
)
def test_dataset_of_the_wrong_structure_or_dtype(tmp_path, batches, message):
    trainer = Structured(config(), data=blobs(), model_fn=mlp, workdir=str(tmp_path / "w"))
    trainer.batches = batches
    with pytest.raises(TypeError, match=message):
        trainer.fit()
    assert _snapshot(tmp_path / "w") is None


def test_labels_outside_the_class_range_fail_at_the_first_batch(tmp_path):
    x, y = blobs()
    y[5] = 3  # the model has 3 classes: 0, 1, 2
    trainer = ArrayTrainer(config(), data=(x, y), model_fn=mlp, workdir=str(tmp_path / "w"))
    with pytest.raises(
        ValueError,
        match=r"Loss term 'ce': the first training batch has class labels in \[0, 3\], but the model's output has 3 classes",
    ):
        trainer.fit()
    assert _snapshot(tmp_path / "w") is None


def test_batch_size_not_divisible_by_the_replicas():
    cfg = config(batch_size=10, **{"distribution.strategy": "mirrored", "distribution.cpu_devices": 4})
    with pytest.raises(ConfigError, match=r"config.batch_size=10 is not divisible by the 4 replicas"):
        ArrayTrainer(cfg, data=blobs(), model_fn=mlp)


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("keep me")
    with pytest.raises(NotADirectoryError, match=r"--workdir .*file' is a file"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, workdir=str(afile))
    assert afile.read_text() == "keep me"
    with pytest.raises(PermissionError, match=r"--workdir '/proc/sys/framework-test' is not writable"):
        ArrayTrainer(config(), data=blobs(), model_fn=mlp, workdir="/proc/sys/framework-test")


def test_a_config_override_of_the_wrong_type(tmp_path, capsys):
    """`python experiments/digits.py ...` parsed and refused by `framework.run` in this process."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))  # digits.py imports its neighbour `common`
    try:
        digits = importlib.import_module("digits")
    finally:
        sys.path.remove(os.path.join(ROOT, "experiments"))
    argv = [os.path.join(ROOT, "experiments", "digits.py"), f"--config={ROOT}/configs/digits.py",
            f"--workdir={tmp_path / 'w'}", "--config.epochs=ten"]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        try:
            framework.run(digits.DigitsTrainer, argv)
        finally:
            flags.FLAGS.unparse_flags()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--config.epochs=ten" in stderr and "invalid literal for int()" in stderr
    assert not (tmp_path / "w").exists()


def test_another_experiments_checkpoints_are_refused_unless_allowed(tmp_path):
    workdir = str(tmp_path / "w")
    ArrayTrainer(config(epochs=1), data=blobs(), model_fn=mlp, workdir=workdir).fit()

    class OtherExperiment(ArrayTrainer):
        pass

    before = _snapshot(workdir)
    with pytest.raises(CheckpointMismatch, match=r"was written by ArrayTrainer, not OtherExperiment"):
        OtherExperiment(config(epochs=1), data=blobs(), model_fn=mlp, workdir=workdir).fit()
    assert _snapshot(workdir) == before
    allowed = OtherExperiment(config(epochs=1, **{"checkpoint.allow_mismatch": True}), data=blobs(), model_fn=mlp,
                              workdir=workdir)  # fmt: skip
    allowed.fit()
    assert allowed.resumed_at_step == 0 and allowed.step == 6
    aside = [n for n in os.listdir(workdir) if n.startswith("checkpoints.set-aside-")]
    assert len(aside) == 1 and os.listdir(os.path.join(workdir, aside[0], "6"))
