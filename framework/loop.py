"""The compiled multi-step functions that drive a distributed iterator.

One `tf.function` per phase runs `num_steps` replica steps in a `tf.range`
loop. `num_steps` is a tensor argument and the iterator's type spec does not
change between epochs, so each function is traced once per run: a short last
group of steps costs no retrace.

    train_fn(iterator, num_steps) -> (sums, last):
        logs = replica_step(next(iterator)) averaged over replicas  # step 1
        sums = logs
        repeat num_steps - 1 times, or until `should_stop()`:
            logs = ...; sums += logs
        return sums, logs

Per-step logs are scalars; they are averaged over replicas inside the step
(one batched all-reduce) and summed over the call, so the host reads one
small dict per call and nothing per step.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

ReplicaStep = Callable[[object], dict]


def _scalar_logs(logs, where: str) -> dict[str, tf.Tensor]:
    if logs is None:
        return {}
    if not isinstance(logs, dict):
        raise TypeError(f"{where} must return a dict of scalar logs (or None), got {type(logs).__name__}.")
    out = {}
    for key, value in logs.items():
        value = tf.convert_to_tensor(value)
        if value.shape.rank != 0:
            raise ValueError(f"{where} returned log {key!r} with shape {value.shape}; logs must be scalars.")
        out[key] = tf.cast(value, tf.float32)
    return out


def _mean_over_replicas(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1 or not logs:
        return logs
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, logs)


def make_step_function(
    strategy: tf.distribute.Strategy,
    replica_step: ReplicaStep,
    *,
    where: str,
    on_step: Callable[[], None] | None = None,
    should_stop: Callable[[], tf.Tensor] | None = None,
) -> Callable:
    """Returns the tf.function `fn(iterator, num_steps) -> (sums, last)`."""

    def replica_fn(batch):
        return _mean_over_replicas(_scalar_logs(replica_step(batch), where))

    def one_step(iterator):
        per_replica = strategy.run(replica_fn, args=(next(iterator),))
        if on_step is not None:
            on_step()
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], per_replica)

    @tf.function(autograph=True)
    def multi_step(iterator, num_steps):
        logs = one_step(iterator)
        sums = logs
        for _ in tf.range(num_steps - 1):
            if should_stop is not None and should_stop():
                break
            logs = one_step(iterator)
            sums = {k: sums[k] + logs[k] for k in sums}
        return sums, logs

    return multi_step


def make_skip_function(strategy: tf.distribute.Strategy) -> Callable:
    """`fn(iterator, num_steps)` that draws and drops batches (resuming mid-epoch)."""

    @tf.function
    def skip(iterator, num_steps):
        for _ in tf.range(num_steps):
            strategy.run(lambda batch: None, args=(next(iterator),))

    return skip
