"""Gradient updates: every replica applies the same, fully reduced gradient, or none does.

`Updater` owns the optimizers of a Trainer (`Trainer.optimizer` and any added
with `Trainer.add_optimizer`) and turns each replica's gradient share into at
most one optimizer update. In replica context, per `apply_gradients` call:

    g = this replica's share of the gradient (times the loss scale S under float16)
    grad_accum_steps k == 1:
        G = all_reduce_sum(g)        # one batched all-reduce; a non-finite-loss flag rides along
    k > 1, micro-batch j with N_j examples over all replicas, w_j = N_j / batch_size:
        acc += w_j * g; wsum += w_j  # replica-local variables: no communication
        every k-th call: G = all_reduce_sum(acc) / wsum; acc, wsum = 0
    G is identical on every replica, so is every decision taken from it:
        float32/bfloat16: non-finite loss or G -> skip the update on every replica
        float16: LossScaleOptimizer sees the same G everywhere -> skips and halves S everywhere
        clipping: S * clip(G / S), i.e. on the unscaled, all-reduced gradient
    optimizer.apply(G), with Keras' own all-reduce switched off (G is already reduced)

Keras' own clipping, accumulation and float16 finiteness check are wrong or
fail under distribution; `framework.optim.keras_internals` says why and what we take over.

Counting: `Trainer.step` counts micro-batches (`train_step` calls);
`optimizer.iterations` counts applied updates, so learning-rate schedules see
updates and a float16 step skipped for overflow is not counted.

Accumulation is exact for a mean loss: micro-batch j's loss is the mean over
its N_j examples, and the mean over the concatenation is
sum_j N_j mean_j / sum_j N_j; w_j makes full micro-batches weigh exactly 1 and
a short last batch its share. A regularizer (counted once per micro-batch)
averages to itself. Sample-weighted means and batch-level terms (Dice) over
the concatenation are not such weighted means: for those, accumulation
averages the micro-batch losses by example count. Windows of k micro-batches
run on across epoch boundaries, like Keras'. Checkpoints taken at a window
boundary need nothing extra; mid-window ones need `Updater.variables`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from framework import distribute
from framework.optim import keras_internals, precision
from framework.optim.keras_internals import Clipping, refill


def _run_if(pred: tf.Tensor, fn: Callable[[], None], otherwise: Callable[[], None] | None = None) -> None:
    """Runs `fn` on every replica iff `pred` (else `otherwise`); `pred` must be equal on all replicas.

    MirroredStrategy cannot merge_call (all-reduce, variable update) inside a
    replica-context cond: branch in cross-replica context instead.
    """

    def run(call, *args):
        call(*args)  # outputs would have to match the no-op branch's

    def other(call=None):
        if otherwise is not None:
            otherwise() if call is None else call(otherwise)

    context = tf.distribute.get_replica_context()
    strategy = tf.distribute.get_strategy()
    # A one-device MirroredStrategy still merge_calls in optimizer.apply: only the
    # default and one-device strategies may branch in replica context.
    plain = not tf.distribute.has_strategy() or isinstance(strategy, tf.distribute.OneDeviceStrategy)
    if plain or tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(pred, lambda: run(fn), other)
        return

    def cross_replica(strategy, pred):
        decided = strategy.experimental_local_results(pred)[0]
        each = strategy.extended.call_for_each_replica
        tf.cond(decided, lambda: run(each, fn), lambda: other(each))

    context.merge_call(cross_replica, args=(pred,))


def all_finite(grads) -> tf.Tensor:
    """One reduction per gradient: a sum is finite iff all its terms are (or it overflowed)."""
    sums = [_sum(g) for g in grads if g is not None]
    return tf.math.is_finite(tf.add_n(sums)) if sums else tf.constant(True)


def _sum(g) -> tf.Tensor:
    values = tf.cast(_values(g), tf.float32)
    return values if values.shape.rank == 0 else tf.reduce_sum(values)


def _values(g):
    return g.values if isinstance(g, tf.IndexedSlices) else g


def _scale(g, factor):
    if g is None:
        return None
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * tf.cast(factor, g.values.dtype), g.indices, g.dense_shape)
    return g * tf.cast(factor, g.dtype)


def _flag(condition: tf.Tensor) -> tf.Tensor:
    return tf.cast(condition, tf.float32)


# ---- per-optimizer state -----------------------------------------------------------


@dataclasses.dataclass
class _Entry:
    optimizer: keras.optimizers.Optimizer
    variables: Callable[[], list]
    name: str
    clipping: Clipping
    accumulators: dict[int, tf.Variable] = dataclasses.field(default_factory=dict)
    count: tf.Variable | None = None
    weight: tf.Variable | None = None


def _local(value, dtype, name: str, aggregation: tf.VariableAggregation) -> tf.Variable:
    """A variable each replica reads and writes alone (summed or first-replica on save)."""
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=aggregation,
    )


def _variables_source(variables: Any) -> Callable[[], list]:
    if isinstance(variables, keras.layers.Layer):
        return lambda: variables.trainable_variables
    if callable(variables):
        return variables
    if isinstance(variables, Sequence):
        parts = list(variables)
        return lambda: [
            v
            for part in parts
            for v in (part.trainable_variables if isinstance(part, keras.layers.Layer) else [part])
        ]
    raise TypeError(
        "variables must be a keras Layer/Model, a list of layers and variables or a callable returning "
        f"variables, got {type(variables).__name__}."
    )


def _check_registered(entry: _Entry, variables: list, *, primary: bool) -> None:
    """Any subset of an optimizer's registered variables may be updated; others are refused by name."""
    stray = keras_internals.unknown_variables(entry.optimizer, variables)
    if stray:
        names = ", ".join(repr(getattr(v, "path", v.name)) for v in stray[:3])
        more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
        trains = " (the trainer's optimizer trains self.model's)" if primary else ""
        raise ValueError(
            f"apply_gradients(): {names}{more} are not among the variables optimizer {entry.name!r} "
            f"was registered for{trains}. Make them part of "
            "self.model, or train them with an optimizer of their own: "
            "self.add_optimizer(keras.optimizers.X(), [self.encoder, self.head]) in build_optimizer(), "
            "then apply_gradients(..., optimizer=that)."
        )


class Updater:
    """The optimizers of one Trainer and the way gradients reach them."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        *,
        precision: str,
        accum_steps: int = 1,
        batch_size: int = 1,
        clipping: Clipping | None = None,
    ):
        """clipping: the primary optimizer's, when it sets none itself (config.optimizer)."""
        self.strategy, self.precision = strategy, precision
        self.accum_steps, self.batch_size = accum_steps, batch_size
        self.clipping = clipping or Clipping()
        self._entries: list[_Entry] = []
        self._local = threading.local()

    @classmethod
    def from_config(cls, strategy: tf.distribute.Strategy, config) -> Updater:
        return cls(
            strategy,
            precision=config.precision,
            accum_steps=config.grad_accum_steps,
            batch_size=config.batch_size,
            clipping=Clipping.from_config(config.optimizer),
        )

    def add(
        self,
        optimizer: keras.optimizers.Optimizer,
        variables: Any,
        *,
        name: str | None = None,
        primary: bool = False,
    ) -> keras.optimizers.Optimizer:
        """Registers `optimizer` for `variables`; returns it wrapped for the precision.

        `primary`: the trainer's own optimizer: the default of `entry(None)`,
        clipped by `self.clipping` (config) unless it sets clipping itself.
        """
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"Expected a keras.optimizers.Optimizer, got {type(optimizer).__name__}.")
        inner = keras_internals.check_usable(optimizer, self.strategy)
        if any(
            e.optimizer is optimizer or keras_internals.inner(e.optimizer) is inner for e in self._entries
        ):
            raise ValueError(f"Optimizer {inner.name!r} is already registered.")
        own = keras_internals.take_clipping(optimizer)
        clipping = self.clipping if primary else Clipping()
        if own.active and clipping.active and own != clipping:
            raise ValueError(
                f"Optimizer {inner.name!r} sets clipping {own} and config.optimizer sets {clipping}; "
                "use one of them."
            )
        optimizer = precision.wrap_optimizer(optimizer, self.precision)
        keras_internals.install_passthrough(optimizer)
        names = {e.name for e in self._entries}
        name = name or inner.name
        while name in names:
            name += "_"
        entry = _Entry(optimizer, _variables_source(variables), name, own if own.active else clipping)
        self._entries.insert(0 if primary else len(self._entries), entry)
        return optimizer

    def build(self) -> None:
        """Builds every optimizer and its accumulators; call under the strategy scope, before tracing."""
        for entry in self._entries:
            variables = list(entry.variables())
            if not variables:
                raise ValueError(f"Optimizer {entry.name!r} was registered for an empty list of variables.")
            if not entry.optimizer.built:
                entry.optimizer.build(variables)
            if self.accum_steps > 1 and entry.count is None:
                sum_ = tf.VariableAggregation.SUM
                first = tf.VariableAggregation.ONLY_FIRST_REPLICA
                for v in variables:
                    zeros = tf.zeros(v.shape, tf.float32)
                    entry.accumulators[id(v)] = _local(zeros, tf.float32, "grad_accumulator", sum_)
                entry.count = _local(0, tf.int64, "accumulated_micro_batches", first)
                entry.weight = _local(0.0, tf.float32, "accumulated_weight", first)

    @property
    def variables(self) -> list[tf.Variable]:
        """Accumulation state (empty without accumulation): checkpoint it to resume mid-window."""
        out = []
        for e in self._entries:
            if e.count is not None:
                out += [*e.accumulators.values(), e.count, e.weight]
        return out

    def trained_variables(self) -> list:
        """Every variable a registered optimizer updates."""
        return [v for e in self._entries for v in e.variables()]

    def named_optimizers(self) -> list[tuple[str, keras.optimizers.Optimizer]]:
        """(name, optimizer) of every registered optimizer, the trainer's own first."""
        return [(e.name, e.optimizer) for e in self._entries]

    def entry(self, optimizer: keras.optimizers.Optimizer | None) -> _Entry:
        if optimizer is None:
            return self._entries[0]
        for e in self._entries:
            if e.optimizer is optimizer or keras_internals.inner(e.optimizer) is optimizer:
                return e
        raise ValueError(
            f"apply_gradients(optimizer={getattr(optimizer, 'name', optimizer)!r}): the trainer does not "
            "know this optimizer. Create it with self.add_optimizer(...) inside build_optimizer()."
        )

    def logs(self) -> dict[str, tf.Tensor]:
        """The current loss scale of each float16 optimizer (read eagerly or in a graph)."""
        out = {}
        for i, e in enumerate(self._entries):
            scale = precision.loss_scale(e.optimizer)
            if scale is not None and e.optimizer.built:
                out["loss_scale" if i == 0 else f"loss_scale/{e.name}"] = tf.convert_to_tensor(scale)
        return out

    def counting_examples(self, step: Callable) -> Callable:
        """Wraps a replica step so that accumulation can weigh its batch by its examples.

        The count is the leading dimension of the batch's first tensor. A
        thread-local: MirroredStrategy traces each replica in its own thread.
        Without accumulation the step is returned as it is.
        """
        if self.accum_steps == 1:
            return step

        def counted(batch):
            leaves = [t for t in tf.nest.flatten(batch) if getattr(t, "shape", None) is not None]
            leaves = [t for t in leaves if t.shape.rank]
            self._local.examples = tf.cast(tf.shape(leaves[0])[0], tf.float32) if leaves else None
            try:
                return step(batch)
            finally:
                self._local.examples = None

        return counted

    # ---- replica context -----------------------------------------------------------

    def apply(self, optimizer, grads, variables, loss: tf.Tensor, *, on_nonfinite=None) -> None:
        """Runs the pipeline in the module docstring.

        on_nonfinite: called (in replica context, on every replica) when the
        loss, or without loss scaling a gradient, is non-finite on any replica;
        the update is then skipped. Off the common path: it sits in the
        branch of the conditional that skips the update.
        """
        entry = self.entry(optimizer)
        grads, variables = list(grads), list(variables)
        _check_registered(entry, variables, primary=entry is self._entries[0])
        with keras_internals.pre_reduced():
            if self.accum_steps == 1 and distribute.num_replicas() == 1:
                self._update(entry, grads, variables, None, on_nonfinite, loss=loss)
                return
            bad_loss = _flag(tf.logical_not(tf.reduce_all(tf.math.is_finite(tf.cast(loss, tf.float32)))))
            if self.accum_steps == 1:
                present = [g for g in grads if g is not None]
                reduced = distribute.all_reduce_sum([bad_loss, *present])
                self._update(entry, refill(grads, reduced[1:]), variables, reduced[0] == 0, on_nonfinite)
            else:
                finite = self._accumulate(entry, grads, variables, bad_loss)
                if on_nonfinite is not None:
                    _run_if(tf.logical_not(finite), on_nonfinite)

    def _update(
        self, entry: _Entry, grads: list, variables: list, finite_loss, on_nonfinite=None, *, loss=None
    ) -> None:
        """finite_loss: whether the loss was finite everywhere; None: check `loss` here (one replica)."""
        optimizer = entry.optimizer
        scale = precision.loss_scale(optimizer)
        if finite_loss is None and scale is not None:
            finite_loss = tf.reduce_all(tf.math.is_finite(tf.cast(loss, tf.float32)))
        if scale is None:
            if finite_loss is None:  # one reduction for the loss and every gradient
                finite = all_finite([loss, *grads])
            else:
                finite = tf.logical_and(finite_loss, all_finite(grads))
            grads = entry.clipping(grads)
            _run_if(finite, lambda: optimizer.apply(grads, variables), on_nonfinite)
            return
        # LossScaleOptimizer skips and halves the scale on non-finite gradients.
        index = next(i for i, g in enumerate(grads) if g is not None)
        grads[index] = _scale(grads[index], tf.where(finite_loss, 1.0, float("nan")))
        if entry.clipping.active:
            scale = tf.convert_to_tensor(scale)
            grads = [_scale(g, scale) for g in entry.clipping([_scale(g, 1.0 / scale) for g in grads])]
        optimizer.apply(grads, variables)
        if on_nonfinite is not None:
            _run_if(tf.logical_not(finite_loss), on_nonfinite)

    def _accumulate(self, entry: _Entry, grads: list, variables: list, bad_loss: tf.Tensor) -> tf.Tensor:
        if entry.count is None:
            raise RuntimeError(
                f"Optimizer {entry.name!r} has no accumulators: Updater.build() was not called."
            )
        scaled = precision.loss_scale(entry.optimizer) is not None
        bad_grads = tf.constant(0.0) if scaled else _flag(tf.logical_not(all_finite(grads)))
        examples = getattr(self._local, "examples", None)
        stats = distribute.all_reduce_sum(
            tf.stack([bad_loss, bad_grads, tf.constant(0.0) if examples is None else examples])
        )
        weight = 1.0 if examples is None else stats[2] / self.batch_size
        for g, v in zip(grads, variables):
            if g is None:
                continue
            if id(v) not in entry.accumulators:
                raise ValueError(
                    f"apply_gradients(): variable {v.path if hasattr(v, 'path') else v.name!r} is not among "
                    f"the variables registered for optimizer {entry.name!r}."
                )
            entry.accumulators[id(v)].assign_add(weight * tf.cast(tf.convert_to_tensor(g), tf.float32))
        entry.weight.assign_add(weight)
        count = entry.count.assign_add(1)
        accumulated = [None if g is None else entry.accumulators[id(v)] for g, v in zip(grads, variables)]

        def update():
            local = [None if a is None else a.read_value() for a in accumulated]
            present = distribute.all_reduce_sum([a for a in local if a is not None])
            total = entry.weight.read_value()
            mean = refill(local, [g / total for g in present])
            mean = [None if g is None else tf.cast(g, v.dtype) for g, v in zip(mean, variables)]
            self._update(entry, mean, variables, tf.constant(True))
            for a in entry.accumulators.values():
                a.assign(tf.zeros_like(a))
            entry.weight.assign(0.0)

        _run_if(tf.equal(count % self.accum_steps, 0), update)
        return tf.logical_and(stats[0] == 0, stats[1] == 0)
