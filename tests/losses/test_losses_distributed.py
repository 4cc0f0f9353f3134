"""Exact reductions: every loss kind gives the same values and gradients on 1, 2 and 4 replicas.

The global batch below is split unevenly over the replicas (as a partial
last batch would be), every term reads its own head, and each replica
differentiates its share with respect to its own slice of the predictions:
concatenated in replica order, those slices must equal the one-device
gradient. That covers the all-reduce (batch terms) and all-gather (triplet)
gradients, which sum the upstream gradients of every replica. The naive
per-replica reductions (Keras' behaviour) are evaluated on the same data
and shown to differ, so these comparisons can fail.
"""

import keras
import losses_reference as ref
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from framework import distribute, losses

N = 16
SPLITS = {1: [16], 2: [6, 10], 4: [3, 5, 2, 6]}


def _data():
    rng = np.random.default_rng(0)
    uneven = np.where(np.arange(N) < 6, 0.1, 3.0) * rng.uniform(0.5, 1.5, N)
    y, p, w = {}, {}, {}
    y["mse_weighted"], p["mse_weighted"] = rng.normal(size=(N, 3)), rng.normal(size=(N, 3))
    w["mse_weighted"] = uneven
    y["wbce"], p["wbce"] = (rng.uniform(size=(N, 4)) > 0.7) * 1.0, rng.normal(0, 2, (N, 4))
    w["wbce"] = uneven[::-1]
    y["wbce_class"], p["wbce_class"] = (rng.uniform(size=(N, 4)) > 0.3) * 1.0, rng.normal(0, 2, (N, 4))
    w["wbce_class"] = uneven
    seg_w = rng.uniform(0.5, 2, N) * (np.arange(N) % 5 != 0)  # some examples unlabeled
    for name in ("dice", "tversky"):
        y[name] = (rng.uniform(size=(N, 4, 4, 1)) > 0.8) * 1.0
        p[name] = rng.normal(0, 2, (N, 4, 4, 1))
        w[name] = seg_w
    for name in ("triplet_hard", "triplet_all"):
        y[name] = rng.integers(0, 3, N)
        p[name] = rng.normal(size=(N, 4))
        w[name] = rng.uniform(0.5, 2, N) * (np.arange(N) != 7)
    rel = rng.integers(0, 3, (N, 5)) * 1.0
    rel[:6] = 1.0  # the first shard's lists have no pair
    rel[:2, 0] = 2.0
    rel[10, 3:] = -1.0
    y["ranknet"], p["ranknet"], w["ranknet"] = rel, rng.normal(size=(N, 5)), rng.uniform(0.5, 2, N)
    masked = rng.normal(size=(N, 2))
    masked[[1, 2, 3, 12]] = np.nan
    y["masked"], p["masked"], w["masked"] = masked, rng.normal(size=(N, 2)), np.ones(N)
    y["mse"], p["mse"] = rng.normal(size=(N, 3)), rng.normal(size=(N, 3))
    y["dice_plain"], p["dice_plain"] = (rng.uniform(size=(N, 6)) > 0.5) * 1.0, rng.normal(size=(N, 6))
    y["triplet_plain"], p["triplet_plain"] = rng.integers(0, 4, N), rng.normal(size=(N, 3))

    def f32(d):
        return {
            k: np.asarray(v, "int64" if k.startswith("triplet") and d is y else "float32")
            for k, v in d.items()
        }

    return f32(y), f32(p), f32(w)


WEIGHTED = (
    losses.Term(keras.losses.MeanSquaredError()).on("mse_weighted")
    + losses.WeightedBinaryCrossentropy(2.0, from_logits=True).on("wbce")
    + losses.WeightedBinaryCrossentropy(class_weights=[0.3, 1.2], from_logits=True).on("wbce_class")
    + losses.Dice(from_logits=True).on("dice")
    + losses.Tversky(0.3, 0.7, from_logits=True).on("tversky")
    + losses.Triplet(margin=1.0, mining="batch_hard").on("triplet_hard")
    + losses.Triplet(margin=1.0, mining="batch_all").on("triplet_all")
    + losses.RankNet().on("ranknet")
    + losses.Term(keras.losses.MeanAbsoluteError(), mask_nan=True).on("masked")
)
PLAIN = (
    losses.Term(keras.losses.MeanSquaredError()).on("mse")
    + losses.Dice(from_logits=True).on("dice_plain")
    + losses.Triplet(margin=1.0, mining="batch_all").on("triplet_plain")
)
WEIGHTED_HEADS = [t.head for t in WEIGHTED.flat_terms()]
PLAIN_HEADS = [t.head for t in PLAIN.flat_terms()]


def _shards(tree, sizes):
    bounds = np.cumsum([0] + sizes)
    return [{k: v[a:b] for k, v in tree.items()} for a, b in zip(bounds[:-1], bounds[1:])]


def _run(replicas):
    """(global terms, raw values, gradient w.r.t. every head's predictions, Keras-naive values)."""
    strategy = distribute.make_strategy(
        ml_collections.ConfigDict(
            {
                "strategy": "mirrored" if replicas > 1 else "one_device",
                "cpu_devices": replicas if replicas > 1 else 0,
                "tpu": "",
            }
        )
    )
    assert strategy.num_replicas_in_sync == replicas
    y, p, w = _data()
    sizes = SPLITS[replicas]
    shards = list(zip(_shards(y, sizes), _shards(p, sizes), _shards(w, sizes)))
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(
            {k: tf.constant(v) for k, v in part.items()} for part in shards[ctx.replica_id_in_sync_group]
        )
    )

    def replica_fn(y, p, w):
        with tf.GradientTape() as tape:
            tape.watch(p)
            weighted = WEIGHTED({k: y[k] for k in WEIGHTED_HEADS}, {k: p[k] for k in WEIGHTED_HEADS}, w)
            plain = PLAIN({k: y[k] for k in PLAIN_HEADS}, {k: p[k] for k in PLAIN_HEADS})
            total = weighted.total + plain.total
        grads = tape.gradient(total, p)
        naive = {  # Keras under a strategy: a per-replica reduction, scaled by 1/replicas
            "mse_weighted": keras.losses.MeanSquaredError()(
                y["mse_weighted"], p["mse_weighted"], w["mse_weighted"]
            ),
            "dice": keras.losses.Dice()(y["dice"], tf.sigmoid(p["dice"])),
        }
        return {**weighted.terms, **plain.terms, "total": total}, grads, naive

    @tf.function
    def step(values):
        return strategy.run(replica_fn, args=values)

    terms, grads, naive = step(values)
    local = strategy.experimental_local_results
    terms = {k: [float(v) for v in local(t)] for k, t in terms.items()}
    for name, per_replica in terms.items():  # every replica holds the global value
        assert max(per_replica) - min(per_replica) <= 1e-6 * max(1.0, abs(per_replica[0])), name
    grads = {k: np.concatenate([np.asarray(g) for g in local(v)]) for k, v in grads.items()}
    naive = {k: sum(float(x) for x in local(v)) for k, v in naive.items()}
    return {k: v[0] for k, v in terms.items()}, grads, naive


@pytest.fixture(scope="module")
def runs():
    tf.config.list_logical_devices("CPU")  # start the runtime with conftest's 4 logical CPUs
    return {replicas: _run(replicas) for replicas in (1, 2, 4)}


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("head", WEIGHTED_HEADS + PLAIN_HEADS + ["total"])
def test_values_and_gradients_equal_one_device(runs, replicas, head):
    one_terms, one_grads, _ = runs[1]
    terms, grads, _ = runs[replicas]
    assert terms[head] == pytest.approx(one_terms[head], rel=1e-6, abs=1e-7)
    if head != "total":
        assert np.max(np.abs(one_grads[head])) > 1e-4
        np.testing.assert_allclose(grads[head], one_grads[head], atol=2e-7, rtol=1e-5)


def test_one_device_values_match_numpy(runs):
    terms, _, _ = runs[1]
    y, p, w = _data()
    assert terms["mse_weighted"] == pytest.approx(
        np.sum(w["mse_weighted"] * np.mean((y["mse_weighted"] - p["mse_weighted"]) ** 2, -1))
        / np.sum(w["mse_weighted"]),
        rel=1e-5,
    )
    assert terms["dice"] == pytest.approx(
        ref.dice(y["dice"], p["dice"], smooth=1.0, from_logits=True, weight=w["dice"])
    )
    for mining in ("batch_hard", "batch_all"):
        name = "triplet_" + mining.split("_")[1]
        expected = ref.triplet(y[name], p[name], margin=1.0, mining=mining, weight=w[name])
        assert terms[name] == pytest.approx(expected, rel=1e-5)
    assert terms["ranknet"] == pytest.approx(
        ref.ranknet(y["ranknet"], p["ranknet"], weight=w["ranknet"]), rel=1e-5
    )
    valid = ~np.isnan(y["masked"]).any(-1)
    expected = np.mean(np.abs(y["masked"] - p["masked"])[valid])
    assert terms["masked"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("replicas", [2, 4])
def test_naive_per_replica_reductions_differ(runs, replicas):
    """What Keras and per-shard mining would give on this data: not the one-device loss."""
    one_terms, _, _ = runs[1]
    _, _, naive = runs[replicas]
    _, _, one_naive = runs[1]
    for name in ("mse_weighted", "dice"):  # Keras on N replicas vs Keras on one device
        assert abs(naive[name] - one_naive[name]) > 1e-2 * abs(one_naive[name]), name
    y, p, w = _data()
    for name, reference in {
        "triplet_hard": lambda y, p, w: ref.triplet(y, p, margin=1.0, mining="batch_hard", weight=w),
        "triplet_all": lambda y, p, w: ref.triplet(y, p, margin=1.0, mining="batch_all", weight=w),
        "ranknet": lambda y, p, w: ref.ranknet(y, p, weight=w),
    }.items():
        parts = zip(_shards(y, SPLITS[replicas]), _shards(p, SPLITS[replicas]), _shards(w, SPLITS[replicas]))
        per_shard = np.mean([reference(a[name], b[name], c[name]) for a, b, c in parts])
        assert abs(per_shard - one_terms[name]) > 1e-2 * abs(one_terms[name]), name


@pytest.mark.parametrize("examples", [44, 40])  # a partial last batch; an empty replica at the last step
def test_all_gathering_terms_survive_a_partial_last_batch_inside_one_call(examples):
    import framework

    class T(framework.Trainer):
        def build_model(self):
            return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])

        def build_loss(self):
            return losses.Triplet()

        def build_train_dataset(self, ctx):
            x = np.random.default_rng(0).normal(size=(examples, 8)).astype("float32")
            y = np.arange(examples) % 3
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(16))

    c = framework.config.defaults()
    c.batch_size, c.epochs, c.steps_per_execution = 16, 2, 4
    c.distribution.strategy, c.distribution.cpu_devices = "mirrored", 2
    trainer = T(c)
    trainer.fit()
    assert trainer.step == 2 * 3
