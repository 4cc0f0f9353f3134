"""The compiled step loop (`framework.loop`): one trace of the step, exact sums, at least one step per call."""

import functools
import operator

import numpy as np
import pytest
import tensorflow as tf

from framework import config, distribute, log_values
from framework.loop import step_function


def _strategy(kind):
    dist = config.defaults().distribution
    if (
        kind == "mirrored"
    ):  # made by the framework: fresh collective keys, no clash with other tests' strategies
        dist.strategy, dist.cpu_devices = "mirrored", 2
    return distribute.make_strategy(dist)


def _iterator(strategy, values, batch):
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(values, np.float32)).batch(batch)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    return iter(dataset)


class CountingStep:
    """A replica step logging its batch's mean (weighted by its size); counts the Python calls, i.e. the traces."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return {"x": log_values.Weighted(tf.reduce_mean(batch), tf.cast(tf.size(batch), tf.float32))}


@pytest.mark.parametrize("kind", ["one_device", "mirrored"])
def test_the_step_is_traced_once_per_replica_and_its_means_are_exact(kind):
    strategy = _strategy(kind)
    step = CountingStep()
    fn = step_function.make_step_function(strategy, step, where="train_step")
    values = np.arange(1.0, 25.0)  # 6 global batches of 4; integers: every sum is exact in float32
    iterator = _iterator(strategy, values, 4)
    sums, _, _ = fn(iterator, tf.constant(3, tf.int64))
    sums_2, _, _ = fn(iterator, tf.constant(2, tf.int64))
    # Oracle: Python calls of the step (one per replica per trace) and numpy means of the batches consumed.
    assert step.calls == strategy.num_replicas_in_sync
    assert sums.means()["x"] == np.mean(values[:12])
    assert sums_2.means()["x"] == np.mean(values[12:20])
    assert fn.experimental_get_tracing_count() == 1


def test_sums_keep_a_negative_zero():
    """The loop's sums start at -0.0 (the additive identity): steps logging -0.0 sum to -0.0, as IEEE adds them."""
    fn = step_function.make_step_function(
        _strategy("one_device"), lambda batch: {"x": -0.0 * tf.reduce_sum(batch)}, where="s"
    )
    sums, _, _ = fn(_iterator(_strategy("one_device"), np.ones(8), 2), tf.constant(4, tf.int64))
    ieee_sum = functools.reduce(operator.add, [np.float32(-0.0)] * 4)  # np.sum starts from +0.0
    assert np.signbit(sums.parts["x"][0]).all() and np.signbit(ieee_sum)


@pytest.mark.parametrize("finite_sums", [False, True])
def test_a_call_runs_one_step_even_when_told_to_stop_as_it_starts(finite_sums):
    strategy = _strategy("one_device")
    iterator = _iterator(strategy, np.arange(8.0), 1)
    fn = step_function.make_step_function(
        strategy,
        CountingStep(),
        where="train_step",
        keep_going=lambda: tf.constant(False),
        finite_sums=finite_sums,
    )
    sums, last, _ = fn(iterator, tf.constant(5, tf.int64))
    assert sums.means()["x"] == 0.0 and last["x"] == 0.0
    assert float(next(iterator)[0]) == 1.0  # the iterator moved by one element: one step ran


def test_finite_sums_leave_a_non_finite_step_out_and_return_its_values():
    strategy = _strategy("one_device")
    values = [1.0, np.nan, 3.0, 5.0]
    fn = step_function.make_step_function(strategy, CountingStep(), where="train_step", finite_sums=True)
    sums, last, _ = fn(_iterator(strategy, values, 1), tf.constant(4, tf.int64))
    assert (sums.steps, sums.counted) == (4, 3)
    assert sums.means()["x"] == np.mean([1.0, 3.0, 5.0])
    assert last["x"] == 5.0  # the last step's values
