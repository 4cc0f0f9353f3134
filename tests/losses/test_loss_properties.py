"""Property-based tests (Hypothesis) of the loss algebra, its log means, and evaluate/predict.

For random batch sizes, shapes, sample weights (zeros, all-zero batches, none), NaN-masked labels,
term weights and schedules, and splits of the global batch over 1, 2 or 4 replicas that need not be
even (a replica may get no example):

* every term, the total and the logged means equal a float64 numpy reference
  (tests/losses_reference.py for the library losses);
* each replica holds the global values, and the per-replica gradients, concatenated in replica
  order, equal the one-device gradient;
* `Trainer.evaluate` over partial batches gives the means over all examples of Keras' own forward
  pass, and `Trainer.predict` returns Keras' outputs for every example once, in order.

Tracing is the cost: one loss expression and one step function per replica count are built per
module (retracing is relaxed to unknown shapes), and one trainer per replica count serves every
evaluation dataset. Examples are few and derandomized, so CI sees the same cases every run.
"""

import functools
import os

import keras
import losses_reference as ref
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from framework import distribute, losses
from framework.log_values import Layout, mean_of

from toys import ArrayTrainer, config, mlp

# TEST_PROPERTY_EXAMPLES raises the number of cases for a longer search (CI: the default).
PROPERTY = settings(
    max_examples=int(os.environ.get("TEST_PROPERTY_EXAMPLES", "12")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

SCHEDULE = keras.optimizers.schedules.PiecewiseConstantDecay([3, 6], [1.0, 0.0, 2.5])


def schedule_reference(step):
    return 1.0 if step <= 3 else (0.0 if step <= 6 else 2.5)


LOSS = (
    losses.Term(keras.losses.MeanSquaredError(), mask_nan=True).on("reg")
    + 0.5 * losses.Term(keras.losses.MeanAbsoluteError(), reduction="sum_over_batch_size").on("mae")
    + losses.WeightedBinaryCrossentropy(2.0, from_logits=True, weight=SCHEDULE).on("bin")
    + 1.5 * losses.Dice(from_logits=True).on("seg")
    + losses.Triplet(margin=1.0, mining="batch_all").on("emb").named("triplet_all")
    + losses.Triplet(margin=0.5, mining="batch_hard", weight=lambda step: 0.25 * tf.cast(step, tf.float32))
    .on("emb")
    .named("triplet_hard")
    + losses.RankNet().on("rank")
)
TERM_WEIGHTS = {  # step -> the weight of each term in the total
    "reg": lambda step: 1.0,
    "mae": lambda step: 0.5,
    "bin": schedule_reference,
    "seg": lambda step: 1.5,
    "triplet_all": lambda step: 1.0,
    "triplet_hard": lambda step: 0.25 * step,
    "rank": lambda step: 1.0,
}
HEADS = ("reg", "mae", "bin", "seg", "emb", "rank")


def _safe_mean(numerator, denominator):
    return numerator / denominator if denominator != 0 else 0.0


def reference_terms(y, p, w, n):
    """Every term of LOSS on the global batch, float64 numpy."""
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    valid = ~np.isnan(y["reg"]).any(-1)
    mse = np.mean((np.nan_to_num(y["reg"]) - p["reg"]) ** 2, -1)
    bce_weight = w if w.sum() != 0 else None
    return {
        "reg": _safe_mean(np.sum(w * valid * mse), np.sum(w * valid)),
        "mae": np.sum(w * np.mean(np.abs(y["mae"] - p["mae"]), -1)) / n,
        "bin": (
            ref.weighted_bce(y["bin"], p["bin"], pos_weight=2.0, from_logits=True, weight=bce_weight)
            if bce_weight is not None
            else 0.0
        ),
        "seg": ref.dice(y["seg"], p["seg"], smooth=1.0, from_logits=True, weight=w),
        "triplet_all": ref.triplet(y["emb"], p["emb"], margin=1.0, mining="batch_all", weight=w),
        "triplet_hard": ref.triplet(y["emb"], p["emb"], margin=0.5, mining="batch_hard", weight=w),
        "rank": ref.ranknet(y["rank"], p["rank"], weight=w),
    }


def make_batch(sizes, *, seed, dims, classes, masked, weights, step):
    """(labels, predictions, sample weights or None, global size, replica sizes, step).

    Args:
      sizes: examples per replica (their number is the replica count; 0 allowed).
      seed: the numpy seed of the values.
      dims: head -> its feature size.
      classes: the number of embedding classes.
      masked: per example, whether its "reg" label holds a NaN.
      weights: "none", "ones", "some_zero" or "all_zero".
      step: the global step the schedules read.
    """
    n = int(sum(sizes))
    rng = np.random.default_rng(seed)
    y = {
        "reg": rng.normal(size=(n, dims["reg"])),
        "mae": rng.normal(size=(n, dims["mae"])),
        "bin": (rng.uniform(size=(n, dims["bin"])) > 0.6) * 1.0,
        "seg": (rng.uniform(size=(n, dims["seg"])) > 0.7) * 1.0,
        "emb": rng.integers(0, classes, n),
        "rank": rng.integers(-1, 3, (n, dims["rank"] + 1)) * 1.0,
    }
    y["reg"][np.array(masked, bool), rng.integers(0, dims["reg"])] = np.nan
    p = {head: rng.normal(0, 2, y[head].shape) for head in HEADS if head != "emb"}
    p["emb"] = rng.normal(size=(n, dims["emb"]))
    w = {
        "none": None,
        "ones": np.ones(n),
        "some_zero": rng.uniform(0, 3, n) * (rng.uniform(size=n) > 0.4),
        "all_zero": np.zeros(n),
    }[weights]
    y = {k: v.astype("int64" if k == "emb" else "float32") for k, v in y.items()}
    p = {k: v.astype("float32") for k, v in p.items()}
    return y, p, None if w is None else w.astype("float32"), n, [int(s) for s in sizes], step


@st.composite
def batches(draw):
    n = draw(st.integers(1, 12))
    replicas = draw(st.sampled_from([1, 2, 4]))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=replicas - 1, max_size=replicas - 1)))
    return make_batch(
        np.diff([0, *cuts, n]),
        seed=draw(st.integers(0, 2**32 - 1)),
        dims={head: draw(st.integers(1, 4)) for head in HEADS},
        classes=draw(st.integers(1, 3)),
        masked=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        weights=draw(st.sampled_from(["none", "ones", "some_zero", "all_zero"])),
        step=draw(st.integers(0, 8)),
    )


ALL_TWO = dict.fromkeys(HEADS, 2)


@functools.cache
def _strategy(replicas):
    tf.config.list_logical_devices("CPU")  # start the runtime with conftest's 4 logical CPUs
    cfg = {"strategy": "mirrored" if replicas > 1 else "one_device", "cpu_devices": replicas, "tpu": ""}
    if replicas == 1:
        cfg["cpu_devices"] = 0
    return distribute.make_strategy(ml_collections.ConfigDict(cfg))


PREDICTION_SPECS = {head: tf.TensorSpec([None, None], tf.float32) for head in HEADS}
LABEL_SPECS = {**PREDICTION_SPECS, "emb": tf.TensorSpec([None], tf.int64)}


@functools.cache
def _step(replicas, weighted):
    """The compiled step on `replicas` replicas, traced once for any shapes.

    It takes the global batch and the replica sizes; each replica slices its own share, so shapes
    and splits vary without retracing. Returns (terms, total, packed logs, gradient w.r.t. the
    replica's predictions) per replica, and the logs' layout.
    """
    strategy = _strategy(replicas)
    layout = Layout()

    def replica_fn(y, p, w, sizes, step):
        index = tf.distribute.get_replica_context().replica_id_in_sync_group
        start = tf.reduce_sum(sizes[:index])
        share = functools.partial(tf.nest.map_structure, lambda v: v[start : start + sizes[index]])
        y, p, w = share(y), share(p), share(w)
        with tf.GradientTape() as tape:
            tape.watch(p)
            result = LOSS(y, p, w if weighted else None, step=step)
        packed = layout.pack(result.logs(), (y, p), "the loss")
        return result.terms, result.total, packed, tape.gradient(result.total, p)

    @tf.function(
        autograph=False,
        input_signature=[
            LABEL_SPECS,
            PREDICTION_SPECS,
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([replicas], tf.int32),
            tf.TensorSpec([], tf.int64),
        ],
    )
    def run(y, p, w, sizes, step):
        return strategy.run(replica_fn, args=(y, p, w, sizes, step))

    return run, layout


def evaluate_loss(y, p, w, sizes, step):
    """Global terms (checked equal on every replica), total, logged means and concatenated gradients."""
    strategy = _strategy(len(sizes))
    run, layout = _step(len(sizes), w is not None)
    weights = np.ones(sum(sizes), "float32") if w is None else w
    terms, total, packed, grads = run(y, p, weights, np.asarray(sizes, "int32"), np.int64(step))
    local = strategy.experimental_local_results
    out = {}
    for name, value in {**terms, "total": total}.items():
        per_replica = [float(v) for v in local(value)]
        assert max(per_replica) - min(per_replica) <= 1e-6 * max(1.0, abs(per_replica[0])), name
        out[name] = per_replica[0]
    # The compiled loop averages the packed logs over replicas, then sums them over steps.
    packed = np.mean([np.asarray(v, np.float64) for v in local(packed)], axis=0)
    logged = {key: mean_of(parts) for key, parts in layout.unpack(packed).items()}
    grads = {k: np.concatenate([np.asarray(g) for g in local(v)]) for k, v in grads.items()}
    return out, logged, grads


def _close(got, want, what):
    assert got == pytest.approx(want, rel=2e-5, abs=2e-6), what


@PROPERTY
@given(batches())
# Two empty replicas, no weight anywhere, a schedule at 0: every term 0, nothing NaN.
@example(
    make_batch([0, 3, 0, 2], seed=1, dims=ALL_TWO, classes=2, masked=[0] * 5, weights="all_zero", step=5)
)
# Every regression label masked out; one replica holds the whole batch.
@example(make_batch([4, 0], seed=2, dims=ALL_TWO, classes=3, masked=[1] * 4, weights="some_zero", step=8))
# One example on four replicas: no triplet anywhere.
@example(make_batch([0, 0, 1, 0], seed=3, dims=ALL_TWO, classes=1, masked=[0], weights="ones", step=0))
def test_terms_total_logs_and_gradients_equal_numpy_and_one_device(batch):
    y, p, w, n, sizes, step = batch
    want = reference_terms(y, p, w, n)
    want_total = sum(TERM_WEIGHTS[name](step) * value for name, value in want.items())
    one_device = evaluate_loss(y, p, w, [n], step)
    runs = [one_device] if len(sizes) == 1 else [one_device, evaluate_loss(y, p, w, sizes, step)]
    for terms, logged, grads in runs:
        for name, value in want.items():
            _close(terms[name], TERM_WEIGHTS[name](step) * value, f"term {name} on {sizes}")
            _close(logged[f"loss/{name}"], TERM_WEIGHTS[name](step) * value, f"logged loss/{name}")
        _close(terms["total"], want_total, f"total on {sizes}")
        _close(logged["loss"], want_total, "logged loss")
        for head, grad in grads.items():
            assert np.all(np.isfinite(grad)), head
            np.testing.assert_allclose(grad, one_device[2][head], atol=1e-6, rtol=1e-4, err_msg=head)


# ---- evaluate and predict over partial batches ------------------------------------------------

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
EVAL_LOSS = losses.Term(SCCE, name="ce") + 0.5 * losses.Term(
    SCCE, name="keras_ce", reduction="sum_over_batch_size"
)


@functools.cache
def _trainer(replicas):
    overrides = (
        {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas} if replicas > 1 else {}
    )
    x = np.zeros((4, 6), "float32")
    return ArrayTrainer(config(**overrides), data=(x, np.zeros(4, "int32")), model_fn=mlp, loss=EVAL_LOSS)


@functools.cache
def _keras_model():
    return mlp()  # mlp() seeds its initializers: the trainer's model has the same weights


def _eval_set(n, batch, replicas, *, seed, weights):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, (n, 6)).astype("float32")
    y = rng.integers(0, 3, n).astype("int32")
    w = {
        "ones": np.ones(n),
        "some_zero": rng.uniform(0, 3, n) * (rng.uniform(size=n) > 0.4),
        "all_zero": np.zeros(n),
    }
    return x, y, w[weights].astype("float32"), batch, replicas


@st.composite
def eval_sets(draw):
    return _eval_set(
        draw(st.integers(1, 29)),
        draw(st.sampled_from([4, 8, 12])),
        draw(st.sampled_from([1, 2, 4])),
        seed=draw(st.integers(0, 2**32 - 1)),
        weights=draw(st.sampled_from(["ones", "some_zero", "all_zero"])),
    )


@PROPERTY
@given(eval_sets())
@example(_eval_set(1, 4, 4, seed=0, weights="all_zero"))  # three replicas without an example
@example(_eval_set(13, 8, 2, seed=1, weights="some_zero"))  # a partial last batch of 5 on 2 replicas
def test_evaluate_and_predict_over_partial_batches_equal_keras_over_all_examples(case):
    x, y, w, batch, replicas = case
    trainer = _trainer(replicas)
    keras_model = _keras_model()
    np.testing.assert_array_equal(trainer.model.get_weights()[0], keras_model.get_weights()[0])
    logits = keras_model.predict(x, verbose=0, batch_size=64).astype("float64")
    ce = np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y]
    want = {"ce": _safe_mean(np.sum(w * ce), np.sum(w)), "keras_ce": np.sum(w * ce) / len(y)}

    logs = trainer.evaluate(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(batch))
    _close(logs["loss/ce"], want["ce"], "loss/ce")
    _close(logs["loss/keras_ce/raw"], want["keras_ce"], "loss/keras_ce/raw")
    _close(logs["loss"], want["ce"] + 0.5 * want["keras_ce"], "loss")

    predicted = trainer.predict(tf.data.Dataset.from_tensor_slices(x).batch(batch))
    assert predicted.shape == logits.shape
    np.testing.assert_allclose(predicted, logits, rtol=1e-5, atol=1e-5)
