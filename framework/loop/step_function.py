"""The compiled multi-step functions that drive a distributed iterator.

One `tf.function` per phase runs `num_steps` replica steps in a `tf.range`
loop. `num_steps` is a tensor argument and the iterator's type spec does not
change between epochs, so each function is traced once per run: a short last
group of steps costs no retrace.

    train_fn(iterator, num_steps) -> (sums, suspect, after):
        sums = [-0.0]  # the additive identity, broadcast at the first step
        repeat up to num_steps times (at least once) while `keep_going()`:
            packed = pack(replica_step(next(iterator))) averaged over replicas
            sums += packed
        return sums, (packed if finite_sums else sums), after()

The step is traced once, as the loop body.

Per-step logs are scalars, each with the weight it has in a mean
(`framework.log_values`): a step packs them into one flat tensor (`v * w`,
then `w`), averaged over replicas inside the step (one all-reduce) and
summed over the call, so the host reads one small array per call and
nothing per step; means are exact over examples whatever the batch sizes.
The loop carries as little as it can: each loop variable costs a few ops
per step, so the last step's values are carried only with `finite_sums`.
`after()` is what the host reads between calls (the trainer's metric
results, learning rates, non-finite step), read once after the last step
in the same call: reading it eagerly would cost a few eager ops per value.

`config.jit_compile` (`xla_plan`): with one replica the whole replica step is
XLA-compiled. With several, all-reduces and distributed variable updates need
`merge_call`, which an XLA function cannot contain (optimizer.apply under
MirroredStrategy: keras#21366), so only the model's forward pass is compiled,
and with it the backward pass (the gradient of a `jit_compile` function is
compiled too); loss reductions, clipping and the update run outside XLA.

Replica steps trace under `randomness.replica_streams()`: each replica draws
its own numbers from the SeedGenerators (Dropout's, a trainer's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf
from absl import logging

from framework import log_values
from framework.data import input_positions
from framework.optim import randomness
from framework.outputs import run_log

ReplicaStep = Callable[[object], dict]


def make_step_function(
    strategy: tf.distribute.Strategy,
    replica_step: ReplicaStep,
    *,
    where: str,
    on_step: Callable[[], None] | None = None,
    keep_going: Callable[[], tf.Tensor] | None = None,
    jit_compile: bool = False,
    finite_sums: bool = False,
    after: Callable[[], object] | None = None,
    convert_step: bool = True,
) -> StepFunction:
    """Returns the compiled function `fn(iterator, num_steps) -> (sums, last, after)`; see `StepFunction`.

    jit_compile: XLA-compile the whole replica step (see `xla_plan`).
    finite_sums: leave steps with a non-finite log out of the sums
      (nan_policy="skip"); `sums.counted` says how many were summed.
    after: returns a nest of scalar tensors, read in cross-replica context
      after the call's last step; the host gets the same nest of floats.
    convert_step: let AutoGraph convert `replica_step` (a user's step may
      branch on tensors in Python). False for the framework's own steps, which
      need no conversion: converting them and what they call is most of a
      trace's CPU time.
    """
    layout = log_values.Layout()
    after_values = _Nest(after)
    replica_fn = _packed_replica_step(replica_step, layout, where)
    if not convert_step:
        replica_fn = tf.autograph.experimental.do_not_convert(replica_fn)
    if jit_compile:
        replica_fn = tf.function(replica_fn, jit_compile=True, autograph=convert_step)
    if on_step is not None:
        on_step = tf.autograph.experimental.do_not_convert(on_step)

    def one_step(iterator):
        batch = input_positions.replica_values(strategy, iterator, next(iterator))
        per_replica = strategy.run(replica_fn, args=(batch,))
        if on_step is not None:
            on_step()
        return strategy.experimental_local_results(per_replica)[0]

    if not convert_step:
        one_step = tf.autograph.experimental.do_not_convert(one_step)
    multi_step = _step_loop(one_step, _Carry(finite_sums), keep_going, after_values)
    return StepFunction(multi_step, layout, counted=finite_sums, after=after_values)


def _packed_replica_step(replica_step: ReplicaStep, layout: log_values.Layout, where: str) -> Callable:
    """The replica step returning its logs packed (`log_values.Layout`) and averaged over replicas."""

    def replica_fn(batch):
        with randomness.replica_streams():
            logs_of_step = replica_step(batch)
        packed = layout.pack(logs_of_step, batch, where)
        if packed is None:
            packed = tf.zeros([0])
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1 and packed.shape[0]:
            packed = context.all_reduce(tf.distribute.ReduceOp.MEAN, packed)
        return packed

    return replica_fn


def _step_loop(
    one_step: Callable, carry: _Carry, keep_going: Callable[[], tf.Tensor] | None, after_values: _Nest
) -> Callable:
    """`tf.function(iterator, num_steps)`: one loop whose body is the only trace of the step.

    The first step always runs (a do-while): a call returns one step's logs
    at least, even when `keep_going()` is false as it starts.
    """

    @tf.autograph.experimental.do_not_convert
    def go_on(done, limit):
        more = done < limit
        if keep_going is None:
            return more
        return tf.logical_and(more, tf.logical_or(tf.equal(done, 0), keep_going()))

    @tf.function(autograph=True)
    def multi_step(iterator, num_steps):
        state = carry.initial()
        done = tf.constant(0, num_steps.dtype)
        limit = tf.maximum(num_steps, 1)
        # The stop test is part of the loop condition: a `break` would make
        # AutoGraph wrap the whole step in a conditional, which costs per step.
        while go_on(done, limit):
            tf.autograph.experimental.set_loop_options(shape_invariants=[(state, carry.invariants())])
            state = carry.add(state, one_step(iterator))
            done += 1
        return state[0], state[-1], after_values.flat(state[0])

    return multi_step


class _Carry:
    """What the step loop carries: the sums of the packed logs, and the last step's with `finite_sums`.

    The sums start as `[-0.0]`, IEEE's additive identity (`-0.0 + x` is `x`
    bitwise, `-0.0` included), broadcast to the packed logs' length at the
    first step: the length is known only once the loop body has traced the
    step.
    """

    def __init__(self, finite_sums: bool):
        self.finite_sums = finite_sums

    @tf.autograph.experimental.do_not_convert
    def initial(self) -> tuple[tf.Tensor, ...]:
        sums = tf.constant([-0.0])
        return (sums, tf.zeros([0])) if self.finite_sums else (sums,)

    def invariants(self) -> tuple[tf.TensorShape, ...]:
        return (tf.TensorShape([None]),) * (2 if self.finite_sums else 1)

    @tf.autograph.experimental.do_not_convert
    def add(self, state: tuple[tf.Tensor, ...], packed: tf.Tensor) -> tuple[tf.Tensor, ...]:
        if not self.finite_sums:
            return (state[0] + packed,)
        ok = tf.reduce_all(tf.math.is_finite(packed))
        kept = tf.where(ok, packed, tf.zeros_like(packed))
        kept = tf.concat([kept, tf.reshape(tf.cast(ok, tf.float32), [1])], axis=0)  # counts summed steps
        return state[0] + kept, packed


class _Nest:
    """A nest of scalar tensors as one flat float64 tensor in the graph, and back as floats on the host."""

    def __init__(self, fn: Callable[[], object] | None):
        self.fn, self.structure = fn, None

    @tf.autograph.experimental.do_not_convert
    def flat(self, last: tf.Tensor) -> tf.Tensor:
        if self.fn is None:
            return tf.zeros([0], tf.float64)
        with tf.control_dependencies([last]):  # after the last step
            nest = self.fn()
        values = [tf.cast(v, tf.float64) for v in tf.nest.flatten(nest)]
        self.structure = nest
        return tf.stack(values) if values else tf.zeros([0], tf.float64)

    def unflatten(self, flat) -> object | None:
        if self.structure is None:
            return None
        return tf.nest.pack_sequence_as(self.structure, flat.numpy().tolist())


class StepFunction:
    """The compiled function; its results come back to the host as `run_log.Sums`, suspect values and `after`.

    The suspect values are where a non-finite step's logs show: the last
    step's values with `counted` (nan_policy="skip" leaves a non-finite step
    out of the sums), else the call's means (a non-finite step ends the call,
    and a non-finite value stays non-finite in a sum). `after` is the nest of
    floats `make_step_function(after=...)` read after the last step (None
    without one).
    """

    def __init__(self, function, layout: log_values.Layout, *, counted: bool, after: _Nest | None = None):
        self.function, self.layout, self.counted = function, layout, counted
        self.after = after or _Nest(None)
        self._concrete = None

    def __call__(self, iterator, num_steps) -> tuple[run_log.Sums, Mapping[str, float], object | None]:
        """Runs up to `num_steps` steps; returns their sums, the suspect values and `after` (see the class)."""
        # The traced function is called directly: every epoch's iterator has
        # the same spec, and skipping tf.function's dispatch saves ~0.1 ms per
        # call. Tracing through get_concrete_function also keeps TensorFlow's
        # retracing detector (which keys functions by their code) from taking
        # each new Trainer's first trace for a retrace of the previous one's.
        if self._concrete is None:
            self._concrete = self.function.get_concrete_function(iterator, num_steps)
        sums, suspect, after = self._concrete(iterator, num_steps)
        sums, steps = sums.numpy(), int(num_steps)
        counted = None
        if self.counted:
            sums, counted = sums[:-1], int(sums[-1])
            suspect = suspect.numpy()
        else:
            suspect = sums
        sums = run_log.Sums(self.layout.unpack(sums), steps, counted=counted)
        return sums, _Means(self.layout, suspect), self.after.unflatten(after)

    def experimental_get_tracing_count(self) -> int:
        return self.function.experimental_get_tracing_count()


class _Means(Mapping):
    """key -> mean of packed log values, computed when read (the host rarely reads them)."""

    def __init__(self, layout: log_values.Layout, packed):
        self._layout, self._packed, self._means = layout, packed, None

    def _values(self) -> dict[str, float]:
        if self._means is None:
            parts = self._layout.unpack(self._packed)
            self._means = {k: log_values.mean_of(v) for k, v in parts.items()}
        return self._means

    def __getitem__(self, key: str) -> float:
        return self._values()[key]

    def __iter__(self):
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())


def make_predict_function(strategy: tf.distribute.Strategy, predict_step: ReplicaStep) -> Callable:
    """Returns `fn(iterator) -> outputs` of one global batch, its rows in order.

    Replicas hold consecutive slices of the global batch in replica order;
    their outputs are all-gathered, so every worker gets the whole batch's.
    """

    def replica_fn(batch):
        with randomness.replica_streams():
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
    `forward.layer_losses()`: the layer losses of this thread's last call
    (the model's own belong to the compiled function's graph).
    """
    compiled = tf.function(lambda x, training: (model(x, training=training), model.losses), jit_compile=True)
    state = {"compile": True}
    last = threading.local()  # MirroredStrategy traces each replica in a thread of its own

    def forward(x, training=False):
        last.losses = []
        if state["compile"]:
            try:
                outputs, last.losses = compiled(x, training=training)
                return outputs
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

    forward.layer_losses = lambda: getattr(last, "losses", [])
    return forward
