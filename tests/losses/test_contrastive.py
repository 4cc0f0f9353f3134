"""Global-batch steps: `distribute.all_gather`'s gradient rules and `losses.NTXent`, on 1, 2 and 4 replicas.

Oracles: a float64 numpy NT-Xent over the global batch written as loops (and
its central-difference gradient), and the one-device run. Each comparison
that could pass by accident is paired with the wrong version shown to differ:
the NT-Xent of each replica's own examples (the natural per-replica loss), and
a custom step that gathers with the gradient rule its loss form does not
fit. The two-worker case is in tests/distribute/test_multiworker.py.
"""

import keras
import losses_reference as ref
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework import distribute, losses

from toys import config, max_abs_diff, weights_of

TEMPERATURE = 0.2
SPLITS = {1: [16], 2: [6, 10], 4: [3, 5, 2, 6]}  # uneven, as a partial last batch is


def nt_xent(views, temperature, weight=None, normalize=True):
    """SimCLR's NT-Xent, float64: mean over the 2M anchor views of the global batch (weighted)."""
    views = np.asarray(views, np.float64)
    if normalize:
        views = views / np.linalg.norm(views, axis=-1, keepdims=True)
    m = len(views)
    w = np.ones(m) if weight is None else np.asarray(weight, np.float64)
    total = weights = 0.0
    for j in range(m):
        if w[j] == 0:
            continue
        for v in (0, 1):
            anchor = views[j, v]
            numerator = np.exp(anchor @ views[j, 1 - v] / temperature)
            denominator = sum(
                np.exp(anchor @ views[k, s] / temperature)
                for k in range(m)
                for s in (0, 1)
                if (k, s) != (j, v) and w[k] > 0
            )
            total += w[j] * -np.log(numerator / denominator)
            weights += w[j]
    return total / weights


def _strategy(replicas):
    return distribute.make_strategy(
        ml_collections.ConfigDict(
            {
                "strategy": "mirrored" if replicas > 1 else "one_device",
                "cpu_devices": replicas if replicas > 1 else 0,
                "tpu": "",
            }
        )
    )


def _views(m=16, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(m, 1, dim))
    return (base + 0.7 * rng.normal(size=(m, 2, dim))).astype("float32")  # two noisy views of each


WEIGHT = np.where(np.arange(16) % 5 == 2, 0.0, np.linspace(0.5, 2.0, 16)).astype("float32")


def _run_term(replicas, weighted, sizes=None):
    """(the term's value on every replica, the gradient w.r.t. the views, concatenated in replica order)."""
    strategy = _strategy(replicas)
    assert strategy.num_replicas_in_sync == replicas
    bounds = np.cumsum([0] + (sizes or SPLITS[replicas]))
    views = _views()
    parts = [(views[a:b], WEIGHT[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(tf.constant(p) for p in parts[ctx.replica_id_in_sync_group])
    )
    loss = losses.NTXent(TEMPERATURE).on("z")

    def replica_fn(z, w):
        with tf.GradientTape() as tape:
            tape.watch(z)
            result = loss(None, {"z": z}, {"z": w} if weighted else None)
        return result.total, tape.gradient(result.total, z)

    total, grad = strategy.run(tf.function(replica_fn), args=values)
    local = strategy.experimental_local_results
    return [float(t) for t in local(total)], np.concatenate([np.asarray(g) for g in local(grad)])


@pytest.fixture(scope="module")
def term_runs():
    return {(r, w): _run_term(r, w) for r in (1, 2, 4) for w in (False, True)}


@pytest.fixture(scope="module")
def numeric_gradients():
    return {
        weighted: ref.numeric_gradient(lambda v, w=weight: nt_xent(v, TEMPERATURE, w), _views())
        for weighted, weight in ((False, None), (True, WEIGHT))
    }


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_nt_xent_is_the_global_batch_loss_on_any_number_of_replicas(
    term_runs, numeric_gradients, replicas, weighted
):
    weight = WEIGHT if weighted else None
    expected = nt_xent(_views(), TEMPERATURE, weight)
    totals, grad = term_runs[replicas, weighted]
    for total in totals:  # every replica holds the global value
        assert total == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(grad, numeric_gradients[weighted], atol=2e-6)
    if weighted:
        assert np.all(grad[WEIGHT == 0] == 0)  # a weight-0 example is not even a negative
    np.testing.assert_allclose(grad, term_runs[1, weighted][1], atol=1e-6)
    if replicas > 1:  # the per-replica loss (own examples as negatives) is another objective
        bounds = np.cumsum([0] + SPLITS[replicas])
        w = np.ones(16) if weight is None else weight
        per_replica = [
            (nt_xent(_views()[a:b], TEMPERATURE, w[a:b]), w[a:b].sum())
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        naive = sum(v * n for v, n in per_replica) / sum(n for _, n in per_replica)
        assert abs(naive - expected) > 0.05 * expected


def test_a_replica_without_examples_still_sees_the_global_batch(term_runs):
    totals, grad = _run_term(2, True, sizes=[0, 16])
    assert totals == pytest.approx([nt_xent(_views(), TEMPERATURE, WEIGHT)] * 2, rel=1e-6)
    np.testing.assert_allclose(grad, term_runs[1, True][1], atol=1e-6)


def test_the_natural_per_replica_loss_is_easier_than_the_global_one():
    """The issue's symptom, on this data: fewer negatives, a lower loss (2 halves vs the whole)."""
    views = _views()
    halves = np.mean([nt_xent(views[:8], TEMPERATURE), nt_xent(views[8:], TEMPERATURE)])
    assert halves < nt_xent(views, TEMPERATURE) - 0.2


# ---- in a Trainer: the NTXent term and hand-written steps around all_gather ----------------


def encoder():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((2, 6)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
    )


def _pairs(n=40):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, 1, 6))
    return (base + 0.5 * rng.normal(size=(n, 2, 6))).astype("float32")


def _own_anchors(z, keys, offset):
    """Own anchors' NT-Xent values against `keys` (every view of the global batch), labels by offset."""
    dim = tf.shape(z)[-1]
    anchors, keys = tf.reshape(z, [-1, dim]), tf.reshape(keys, [-1, dim])
    logits = tf.matmul(anchors, keys, transpose_b=True) / TEMPERATURE
    rows = 2 * offset + tf.range(tf.shape(anchors)[0])  # anchor i is row offset*2 + i of the global views
    logits = tf.where(tf.one_hot(rows, tf.shape(keys)[0]) > 0, -1e9, logits)  # not its own negative
    positives = tf.bitwise.bitwise_xor(rows, 1)  # the other view of its example
    return keras.losses.sparse_categorical_crossentropy(positives, logits, from_logits=True)


class Contrastive(framework.Trainer):
    """SimCLR-style training on precomputed view pairs; config.task.step picks the step.

    "term": the default step with `losses.NTXent`. "whole": every replica
    computes the whole global loss from `all_gather` (own-slice gradient).
    "share": every replica scores its own anchors against the gathered
    views, labels by `replica_offset` (all-replicas gradient). A `gradient`
    other than the form's own is the wrong rule, for the can-fail checks.
    """

    def build_model(self):
        return encoder()

    def build_loss(self):
        return losses.NTXent(TEMPERATURE)

    def build_train_dataset(self, input_context):
        batch = input_context.get_per_replica_batch_size(self.config.batch_size)
        return tf.data.Dataset.from_tensor_slices(_pairs()).batch(batch)

    def train_step(self, batch):
        task = self.config.task
        if task.step == "term":
            return super().train_step(batch)
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(self.model(batch, training=True), axis=-1)
            if task.step == "whole":
                everyone = distribute.all_gather(z, gradient=task.gradient)
                loss = tf.reduce_mean(_own_anchors(everyone, everyone, 0))  # as on one device
                log = loss
            else:
                keys, offset = distribute.all_gather_with_offset(z, gradient=task.gradient)
                assert_offset = tf.debugging.assert_equal(offset, distribute.replica_offset(z))
                with tf.control_dependencies([assert_offset]):
                    values = _own_anchors(z, keys, offset)
                anchors = tf.cast(2 * tf.shape(keys)[0], tf.float32)  # the global batch's
                loss = tf.reduce_sum(values) / anchors  # this replica's share
                log = framework.Weighted(tf.reduce_mean(values), tf.cast(tf.size(values), tf.float32))
        self.apply_gradients(tape, loss)
        return {"loss": log}


def _batched_numpy_loss(model):
    """The mean over examples of the NT-Xent of each global batch of 16 (the last one of 8)."""
    views = np.asarray(model(_pairs()))
    sizes = [16, 16, 8]
    return np.dot([nt_xent(views[16 * i : 16 * i + n], TEMPERATURE) for i, n in enumerate(sizes)], sizes) / 40


def _fit(replicas, step="term", gradient="own_slice"):
    """(weights after one epoch of 3 steps, the logged training loss, evaluate()'s loss, its numpy)."""
    cfg = config(
        epochs=1,
        **{
            "optimizer.learning_rate": 0.5,
            "distribution.strategy": "mirrored" if replicas > 1 else "one_device",
            "distribution.cpu_devices": replicas if replicas > 1 else 0,
        },
    )
    cfg.task.step, cfg.task.gradient = step, gradient
    trainer = Contrastive(cfg)
    assert trainer.strategy.num_replicas_in_sync == replicas
    logs = trainer.fit()[0]
    assert trainer.step == 3  # 40 pairs in global batches of 16: the last one partial
    evaluated = trainer.evaluate(tf.data.Dataset.from_tensor_slices(_pairs()).batch(16))
    return weights_of(trainer.model), logs["loss"], evaluated["loss"], _batched_numpy_loss(trainer.model)


@pytest.fixture(scope="module")
def one_device():
    return _fit(1)


def test_the_one_device_run_moves_the_weights_and_evaluates_to_numpy(one_device):
    weights, loss, evaluated, numpy_loss = one_device
    assert max_abs_diff(weights, weights_of(encoder())) > 1e-2
    assert evaluated == pytest.approx(numpy_loss, rel=1e-6)
    assert loss > evaluated  # trained


@pytest.mark.parametrize(
    "replicas,step",
    [(2, "term"), (4, "term"), (2, "whole"), (4, "share")],
)
def test_global_batch_steps_train_like_one_device(one_device, replicas, step):
    gradient = "all_replicas" if step == "share" else "own_slice"
    weights, loss, evaluated, numpy_loss = _fit(replicas, step, gradient)
    assert max_abs_diff(weights, one_device[0]) <= 2e-6
    assert loss == pytest.approx(one_device[1], rel=1e-5)
    assert evaluated == pytest.approx(numpy_loss, rel=1e-6)  # evaluation: global batches too


@pytest.mark.parametrize("step,wrong", [("whole", "all_replicas"), ("share", "own_slice")])
def test_the_other_gradient_rule_trains_differently(one_device, step, wrong):
    """A loss form paired with the other rule: the whole loss with a summed gradient (2x), or
    a share whose gradient does not reach the other replica's rows. The first step's loss is
    the same; only the update tells, so the weights comparison above can fail."""
    weights = _fit(2, step, wrong)[0]
    assert max_abs_diff(weights, one_device[0]) > 1e-3


# ---- the helpers themselves ------------------------------------------------------------------


def test_all_gather_outside_a_step_and_its_errors():
    z = tf.ones([3, 2])
    assert (
        distribute.all_gather(z) is not None and int(distribute.replica_offset(z)) == 0
    )  # one replica: identity
    np.testing.assert_array_equal(distribute.all_gather(z), z)
    with pytest.raises(ValueError, match="gradient must be one of"):
        distribute.all_gather(z, gradient="sum")
    with pytest.raises(ValueError, match="rank >= 1"):
        distribute.all_gather(tf.constant(1.0))
    strategy = _strategy(2)
    with strategy.scope(), pytest.raises(RuntimeError, match="inside the step"):
        distribute.all_gather(z)


def test_all_gather_along_another_axis_keeps_replica_order_and_own_gradient():
    strategy = _strategy(2)
    rows = [np.arange(6, dtype="float32").reshape(2, 3), 10 + np.arange(2, dtype="float32").reshape(2, 1)]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(rows[ctx.replica_id_in_sync_group])
    )

    @tf.function
    def step(x):
        def replica_fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                everyone = distribute.all_gather(x, axis=1)
                loss = tf.reduce_sum(everyone * tf.range(1.0, 5.0))  # column j weighs j + 1
            return everyone, distribute.replica_offset(x, axis=1), tape.gradient(loss, x)

        return strategy.run(replica_fn, args=(x,))

    everyone, offsets, grads = (strategy.experimental_local_results(t) for t in step(values))
    expected = np.concatenate(rows, axis=1)
    for e in everyone:
        np.testing.assert_array_equal(e, expected)
    assert [int(o) for o in offsets] == [0, 3]
    np.testing.assert_array_equal(grads[0], np.broadcast_to([1.0, 2.0, 3.0], (2, 3)))
    np.testing.assert_array_equal(grads[1], np.full((2, 1), 4.0))


def test_nt_xent_rejects_predictions_without_two_views():
    loss = losses.NTXent(0.1).on("z")
    with pytest.raises(ValueError, match=r"'z' expects the two views' embeddings .* \[batch, 2, dim\]"):
        loss(None, {"z": tf.ones([4, 8])})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.NTXent(0.0)
