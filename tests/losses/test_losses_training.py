"""Losses inside real `fit()` runs: every kind on 1/2/4 replicas, schedules, masks, logs."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses

from toys import ArrayTrainer, config, max_abs_diff, weights_of

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def multi_head_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(
        16,
        activation="tanh",
        kernel_regularizer=keras.regularizers.L2(1e-2),
        activity_regularizer=keras.regularizers.L1(1e-3),
    )(inputs)
    heads = {"cls": 3, "seg": 8, "emb": 4}
    return keras.Model(
        inputs, {name: keras.layers.Dense(units, name=name)(hidden) for name, units in heads.items()}
    )


def bias_penalty(model):
    return tf.add_n([tf.reduce_sum(tf.square(v)) for v in model.trainable_variables if v.name == "bias"])


# One term of each reduction kind (per-example weighted, batch-level, gathered)
# plus every regularizer; tests/losses/test_losses_distributed.py checks
# each library term's gradient on 1/2/4 replicas on its own.
EVERY_KIND = (
    losses.Term(CE).on("cls")
    + 0.5 * losses.Dice(from_logits=True).on("seg")
    + losses.Triplet(0.5, mining="batch_hard").on("emb")
    + losses.L1(1e-3)
    + losses.L2(1e-3)
    + losses.ModelLosses()  # kernel and activity regularizers
    + losses.Regularizer(bias_penalty, weight=1e-2)
)


def _multi_head_data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = {
        "cls": rng.integers(0, 3, n).astype("int32"),
        "seg": (rng.uniform(size=(n, 8)) > 0.7).astype("float32"),
        "emb": rng.integers(0, 3, n).astype("int32"),
    }
    uneven = np.where(np.arange(n) % 16 < 8, 0.1, 3.0).astype("float32")  # replica 0's shard is light
    w = {
        "cls": uneven,
        "seg": uneven[::-1] * (np.arange(n) % 7 != 0),
        "emb": np.ones(n, "float32"),
    }
    return x, y, {k: v.astype("float32") for k, v in w.items()}


def _fit_every_kind(replicas):
    cfg = config(
        epochs=1,
        **{
            "optimizer.learning_rate": 0.5,
            "distribution.strategy": "mirrored" if replicas > 1 else "one_device",
            "distribution.cpu_devices": replicas if replicas > 1 else 0,
        },
    )
    trainer = ArrayTrainer(cfg, data=_multi_head_data(), model_fn=multi_head_model, loss=EVERY_KIND)
    assert trainer.strategy.num_replicas_in_sync == replicas
    return trainer, trainer.fit()[0]


@pytest.fixture(scope="module")
def every_kind_runs():
    return {replicas: _fit_every_kind(replicas) for replicas in (1, 2, 4)}


@pytest.mark.parametrize("replicas", [2, 4])
def test_every_kind_trains_to_the_same_weights_on_more_replicas(every_kind_runs, replicas):
    one, one_logs = every_kind_runs[1]
    many, logs = every_kind_runs[replicas]
    assert one.step == many.step == 2
    initial = weights_of(multi_head_model())
    assert max_abs_diff(weights_of(one.model), initial) > 1e-2  # the steps moved the weights
    assert max_abs_diff(weights_of(many.model), weights_of(one.model)) <= 2e-6
    names = [t.name for t in EVERY_KIND.flat_terms()]
    assert set(names) <= {k.split("/")[1] for k in one_logs if k.startswith("loss/")}
    weighted = {t.name for t in EVERY_KIND.flat_terms() if t.weight != 1.0}
    assert {k for k in one_logs if k.endswith("/raw")} == {f"loss/{n}/raw" for n in weighted}
    for key in [f"loss/{n}" for n in names] + [f"loss/{n}/raw" for n in weighted]:
        assert logs[key] == pytest.approx(one_logs[key], rel=1e-5, abs=1e-7), key
    assert logs["loss"] == pytest.approx(one_logs["loss"], rel=1e-6)
    assert sum(one_logs[f"loss/{n}"] for n in names) == pytest.approx(one_logs["loss"], rel=1e-5)


def test_schedules_change_term_weights_inside_fit_and_every_term_is_logged(tmp_path):
    warmup = lambda step: tf.minimum(1.0, tf.cast(step + 1, tf.float32) / 4)  # noqa: E731
    decay = keras.optimizers.schedules.ExponentialDecay(2.0, decay_steps=1, decay_rate=0.5)
    loss = (
        losses.Term(CE, weight=warmup).on("cls")
        + losses.Term(keras.losses.MeanSquaredError(), weight=decay).on("reg")
        + losses.L2(1e-2)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = {"cls": rng.integers(0, 3, 96).astype("int32"), "reg": rng.normal(size=(96, 2)).astype("float32")}
    workdir = str(tmp_path / "run")
    cfg = config(epochs=1, log_every_steps=1, steps_per_execution=4)
    ArrayTrainer(cfg, data=(x, y), model_fn=two_head_model, loss=loss, workdir=workdir).fit()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 7))
    for r in records:
        step = r["step"] - 1  # the step counter's value while the step ran
        assert r["loss/cls"] / r["loss/cls/raw"] == pytest.approx(min(1.0, (step + 1) / 4), rel=1e-5)
        assert r["loss/reg"] / r["loss/reg/raw"] == pytest.approx(2.0 * 0.5**step, rel=1e-5)
        assert "loss/l2/raw" not in r  # a unit weight: the term is its raw value
        assert r["loss"] == pytest.approx(r["loss/cls"] + r["loss/reg"] + r["loss/l2"], rel=1e-5)
    tags = set()
    for path in glob.glob(os.path.join(workdir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"loss", "loss/cls", "loss/cls/raw", "loss/reg", "loss/reg/raw", "loss/l2"} <= tags


def two_head_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3)(hidden), "reg": keras.layers.Dense(2)(hidden)})


def test_missing_labels_neither_contribute_nor_dilute_a_heads_mean():
    """Unlabeled examples for one head: weight 0 (cls) or NaN labels (reg), on 2 replicas."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 6)).astype("float32")
    cls = rng.integers(0, 3, 16).astype("int32")
    cls_w = np.ones(16, "float32")
    cls_w[[0, 1, 2, 3, 5]] = 0.0  # mostly in replica 0's half
    reg = rng.normal(size=(16, 2)).astype("float32")
    reg[[9, 10, 11, 12, 13, 14]] = np.nan  # mostly in replica 1's half
    reg[4, 1] = np.nan
    data = (x, {"cls": cls, "reg": reg}, {"cls": cls_w, "reg": np.ones(16, "float32")})
    loss = losses.Term(CE).on("cls") + losses.Term(keras.losses.MeanSquaredError(), mask_nan=True).on("reg")
    cfg = config(**{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2})
    trainer = ArrayTrainer(cfg, data=data, model_fn=two_head_model, loss=loss)
    predictions = trainer.model.predict(x, verbose=0)  # before the single step
    logs = trainer.fit()[0]

    logits = predictions["cls"].astype("float64")
    ce = np.log(np.exp(logits).sum(-1)) - logits[np.arange(16), cls]
    assert logs["loss/cls"] == pytest.approx(ce[cls_w > 0].mean(), rel=1e-5)
    valid = ~np.isnan(reg).any(-1)
    mse = ((reg - predictions["reg"]) ** 2).mean(-1)
    assert logs["loss/reg"] == pytest.approx(mse[valid].mean(), rel=1e-5)
    assert all(np.all(np.isfinite(w)) for w in weights_of(trainer.model))
