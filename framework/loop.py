"""The compiled multi-step functions that drive a distributed iterator.

One `tf.function` per phase runs `num_steps` replica steps in a `tf.range`
loop. `num_steps` is a tensor argument and the iterator's type spec does not
change between epochs, so each function is traced once per run: a short last
group of steps costs no retrace.

    train_fn(iterator, num_steps) -> (sums, last):
        logs = replica_step(next(iterator)) averaged over replicas  # step 1
        sums = logs
        repeat num_steps - 1 times while `keep_going()` (tested in the loop condition):
            logs = ...; sums += logs
        return sums, logs

Per-step logs are scalars; they are averaged over replicas inside the step
(one batched all-reduce) and summed over the call, so the host reads one
small dict per call and nothing per step.

`config.jit_compile` (`xla_plan`): with one replica the whole replica step is
XLA-compiled. With several, all-reduces and distributed variable updates need
`merge_call`, which an XLA function cannot contain (optimizer.apply under
MirroredStrategy: keras#21366), so only the model's forward pass is compiled,
and with it the backward pass (the gradient of a `jit_compile` function is
compiled too); loss reductions, clipping and the update run outside XLA.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

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
    keep_going: Callable[[], tf.Tensor] | None = None,
    jit_compile: bool = False,
    finite_sums: bool = False,
) -> Callable:
    """Returns the tf.function `fn(iterator, num_steps) -> (sums, last)`.

    jit_compile: XLA-compile the whole replica step (see `xla_plan`).
    finite_sums: leave steps with a non-finite log out of the sums, and count
      the steps summed in `sums["_counted"]` (nan_policy="skip").
    """

    def add(sums, logs):
        if not finite_sums:
            return logs if sums is None else {k: sums[k] + logs[k] for k in logs}
        ok = tf.reduce_all(tf.math.is_finite(tf.stack(list(logs.values())))) if logs else tf.constant(True)
        kept = {k: tf.where(ok, v, 0.0) for k, v in logs.items()}
        kept["_counted"] = tf.cast(ok, tf.float32)
        return kept if sums is None else {k: sums[k] + kept[k] for k in kept}

    aliases: dict[str, str] = {}  # log key -> the key holding the same tensor

    def replica_fn(batch):
        logs = _scalar_logs(replica_step(batch), where)
        first: dict[int, str] = {}
        for key, value in logs.items():
            aliases[key] = first.setdefault(id(value), key)
        return _mean_over_replicas({k: v for k, v in logs.items() if aliases[k] == k})

    if jit_compile:
        replica_fn = tf.function(replica_fn, jit_compile=True)

    def one_step(iterator):
        per_replica = strategy.run(replica_fn, args=(next(iterator),))
        if on_step is not None:
            on_step()
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], per_replica)

    def go_on(done, num_steps):
        if keep_going is None:
            return done < num_steps
        return tf.logical_and(done < num_steps, keep_going())

    @tf.function(autograph=True)
    def multi_step(iterator, num_steps):
        logs = one_step(iterator)
        sums = add(None, logs)
        done = tf.constant(1, num_steps.dtype)
        # The stop test is part of the loop condition: a `break` would make
        # AutoGraph wrap the whole step in a conditional, which costs per step.
        while go_on(done, num_steps):
            logs = one_step(iterator)
            sums = add(sums, logs)
            done += 1
        return sums, logs

    return StepFunction(multi_step, aliases)


class StepFunction:
    """The compiled function, with each log that aliases another one summed once and copied back."""

    def __init__(self, function, aliases: dict[str, str]):
        self.function, self.aliases = function, aliases
        self._concrete = None

    def __call__(self, iterator, num_steps):
        # The traced function is called directly: every epoch's iterator has
        # the same spec, and skipping tf.function's dispatch saves ~0.1 ms per
        # call. Tracing through get_concrete_function also keeps TensorFlow's
        # retracing detector (which keys functions by their code) from taking
        # each new Trainer's first trace for a retrace of the previous one's.
        if self._concrete is None:
            self._concrete = self.function.get_concrete_function(iterator, num_steps)
        sums, last = self._concrete(iterator, num_steps)
        return self._expand(sums), self._expand(last)

    def _expand(self, logs: dict) -> dict:
        out = {key: logs[source] for key, source in self.aliases.items()}
        out.update((k, v) for k, v in logs.items() if k not in out)  # e.g. "_counted"
        return out

    def experimental_get_tracing_count(self) -> int:
        return self.function.experimental_get_tracing_count()


def make_predict_function(strategy: tf.distribute.Strategy, predict_step: ReplicaStep) -> Callable:
    """Returns `fn(iterator) -> outputs` of one global batch, its rows in order.

    Replicas hold consecutive slices of the global batch in replica order;
    their outputs are all-gathered, so every worker gets the whole batch's.
    """

    def replica_fn(batch):
        outputs = predict_step(batch)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            outputs = context.all_gather(outputs, axis=0)
        return outputs

    @tf.function
    def predict(iterator):
        per_replica = strategy.run(replica_fn, args=(next(iterator),))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], per_replica)

    traced = []

    def call(iterator):
        if not traced:  # traced once, as StepFunction
            traced.append(predict.get_concrete_function(iterator))
        return traced[0](iterator)

    return call


def xla_plan(
    strategy: tf.distribute.Strategy, jit_compile: bool, *, custom_step: bool, where: str
) -> str | None:
    """What `config.jit_compile` compiles: "step", "forward" (the model's call) or None."""
    if not jit_compile:
        return None
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return None  # the TPU compiles the whole loop with XLA anyway
    if strategy.num_replicas_in_sync == 1:
        return "step"
    if not custom_step:
        return "forward"
    logging.warning(
        "config.jit_compile=True: %s is overridden and runs on %d replicas, where XLA cannot compile "
        "the all-reduce and the optimizer update (keras#21366); it runs without XLA. The default step "
        "compiles the model's forward and backward pass.",
        where,
        strategy.num_replicas_in_sync,
    )
    return None


def compile_forward(model: keras.Model) -> Callable:
    """`model(x, training=...)` compiled with XLA, falling back (with a warning) when it cannot be.

    A layer that updates a distributed variable with a cross-replica
    aggregation in its call needs `merge_call`, which fails while tracing.
    """
    compiled = tf.function(lambda x, training: model(x, training=training), jit_compile=True)
    state = {"compile": True}

    def forward(x, training=False):
        if state["compile"]:
            try:
                return compiled(x, training=training)
            except RuntimeError as e:
                if "merge_call" not in str(e):
                    raise
                state["compile"] = False
                logging.warning(
                    "config.jit_compile=True: the forward pass of model %r synchronizes replicas "
                    "(merge_call) and cannot be XLA-compiled; it runs without XLA.",
                    model.name,
                )
        return model(x, training=training)

    return forward
