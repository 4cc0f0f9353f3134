"""Keras optimizers as `framework.optim.updates` uses them: what is taken over, and why.

Keras 3.15's TensorFlow optimizers get three things wrong or fail under a
distribution strategy, so the update pipeline does them itself:

* `LossScaleOptimizer` under MirroredStrategy decides finiteness from replica
  0's un-reduced gradients: an overflow on replica 1 alone is applied and
  writes inf into every replica's weights.
* `clipnorm` / `global_clipnorm` / `clipvalue` run in `_backend_apply_gradients`
  before `TFOptimizer._backend_update_step` all-reduces, so every replica clips
  its own share and the result depends on the replica count. Clipping set on
  an optimizer is therefore taken over here (read, cleared on the optimizer,
  applied to the reduced gradient).
* `gradient_accumulation_steps` all-reduces inside an `ops.cond` in replica
  context, which MirroredStrategy rejects ("merge_call called while defining
  a new graph"); it is refused here in favour of `config.grad_accum_steps`.

and `updates` hands the optimizer an already all-reduced gradient, so Keras'
own all-reduce is switched off for it (`install_passthrough`).

A `keras.random.SeedGenerator`'s state is one mirrored variable, so under a
distribution strategy every replica draws the same seeds and the same
random numbers (Dropout masks, noise); `folded_seed_draws` makes the
replicas' draws differ (`framework.optim.randomness`).

Every Keras internal the framework relies on is in this file.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Clipping:
    """Keras' clipping options, applied to the unscaled all-reduced gradient (0: off)."""

    clipnorm: float = 0.0
    global_clipnorm: float = 0.0
    clipvalue: float = 0.0

    @classmethod
    def from_config(cls, optimizer_config) -> Clipping:
        return cls(clipnorm=optimizer_config.clipnorm, global_clipnorm=optimizer_config.global_clipnorm)

    @property
    def active(self) -> bool:
        return bool(self.clipnorm or self.global_clipnorm or self.clipvalue)

    def __call__(self, grads: list) -> list:
        if not self.active:
            return grads
        dense = [None if g is None else tf.convert_to_tensor(g) for g in grads]  # sums duplicate indices
        present = [g for g in dense if g is not None]
        if self.global_clipnorm:
            present, _ = tf.clip_by_global_norm(present, self.global_clipnorm)
        elif self.clipnorm:
            present = [tf.clip_by_norm(g, self.clipnorm) for g in present]
        else:
            present = [tf.clip_by_value(g, -self.clipvalue, self.clipvalue) for g in present]
        return refill(dense, present)


def refill(template: list, present: list) -> list:
    it = iter(present)
    return [None if g is None else next(it) for g in template]


def inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that updates the variables: itself, or the one a LossScaleOptimizer wraps."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def unknown_variables(optimizer: keras.optimizers.Optimizer, variables: list) -> list:
    """The variables Keras' `optimizer.apply` would refuse: not among those it was built with."""
    updating = inner(optimizer)
    known = getattr(updating, "_trainable_variables_indices", None)
    if not updating.built or known is None:
        return []
    return [v for v in variables if updating._var_key(v) not in known]


def check_usable(optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy):
    """Refuses what cannot work; returns the optimizer that does the updates (inside a LSO)."""
    unwrapped = inner(optimizer)
    if getattr(unwrapped, "_distribution_strategy", strategy) is not strategy:
        raise ValueError(
            f"Optimizer {unwrapped.name!r} was created outside the trainer's strategy scope, so its "
            "variables are not distributed. Create it inside build_optimizer() (build hooks run "
            "under the scope) or under `with trainer.strategy.scope():`."
        )
    if unwrapped.gradient_accumulation_steps:
        raise ValueError(
            f"Optimizer {unwrapped.name!r} sets gradient_accumulation_steps, which Keras applies per "
            "replica and which fails under MirroredStrategy; set config.grad_accum_steps instead."
        )
    return unwrapped


def take_clipping(optimizer: keras.optimizers.Optimizer) -> Clipping:
    """Reads the optimizer's clipping and clears it there: `updates` applies it after the all-reduce."""
    unwrapped = inner(optimizer)
    clipping = Clipping(
        float(unwrapped.clipnorm or 0.0),
        float(unwrapped.global_clipnorm or 0.0),
        float(unwrapped.clipvalue or 0.0),
    )
    unwrapped.clipnorm = unwrapped.global_clipnorm = unwrapped.clipvalue = None
    return clipping


# ---- applying gradients that are already all-reduced ---------------------------
#
# Keras' TensorFlow optimizer all-reduces whatever it is given, in
# `TFOptimizer._all_reduce_sum_gradients`. While `_PASSTHROUGH.depth > 0` (we
# are inside `Updater.apply`) the override below returns them unchanged.
# MirroredStrategy traces replicas in several threads, and LossScaleOptimizer
# applies from threads of its own, so this is a process-wide depth rather than
# a thread-local flag; the replica threads are serialized while tracing. If a
# future Keras stops calling the method, `pre_reduced` raises instead
# of summing the gradient twice.


class _Passthrough:
    depth = 0
    calls = 0


_PASSTHROUGH = _Passthrough()


def install_passthrough(optimizer: keras.optimizers.Optimizer) -> None:
    unwrapped = inner(optimizer)
    if getattr(unwrapped, "_framework_passthrough", False):
        return
    original = getattr(unwrapped, "_all_reduce_sum_gradients", None)
    if original is None:
        raise RuntimeError(
            f"Keras {keras.__version__}: {type(unwrapped).__name__} has no _all_reduce_sum_gradients; "
            "framework.optim.updates cannot hand it all-reduced gradients."
        )

    def all_reduce_sum_gradients(grads_and_vars):
        if _PASSTHROUGH.depth > 0:
            _PASSTHROUGH.calls += 1
            return list(grads_and_vars)
        return original(grads_and_vars)

    unwrapped._all_reduce_sum_gradients = all_reduce_sum_gradients
    unwrapped._framework_passthrough = True


@contextlib.contextmanager
def pre_reduced():
    """Within: optimizers with the passthrough take their gradients as already all-reduced."""
    calls = _PASSTHROUGH.calls
    _PASSTHROUGH.depth += 1
    try:
        yield
    finally:
        _PASSTHROUGH.depth -= 1
    if _PASSTHROUGH.calls == calls:
        raise RuntimeError(
            f"Keras {keras.__version__} no longer all-reduces through "
            "TFOptimizer._all_reduce_sum_gradients; framework.optim.updates must be updated."
        )


# ---- exponential moving average of the weights (Keras' use_ema) -----------------


def ema_enabled(optimizer: keras.optimizers.Optimizer) -> bool:
    return bool(getattr(inner(optimizer), "use_ema", False))


@contextlib.contextmanager
def ema_weights(optimizer: keras.optimizers.Optimizer):
    """Within: the variables hold the optimizer's moving averages; the raw values come back after.

    Evaluation and export read the averaged weights while training continues
    from the raw ones. A no-op for an optimizer without `use_ema` or not yet built.
    As Keras' `use_ema`, only the optimizer's (trainable) variables are
    averaged: non-trainable state such as BatchNorm's moving statistics keeps
    its current values.
    """
    unwrapped = inner(optimizer)
    averages = getattr(unwrapped, "_model_variables_moving_average", None)
    if not ema_enabled(optimizer) or not unwrapped.built or not averages:
        yield
        return
    pairs = [(v, a) for v, a in zip(unwrapped._trainable_variables, averages) if a is not None]
    raw = [tf.identity(tf.convert_to_tensor(v)) for v, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield
    finally:
        for (variable, _), value in zip(pairs, raw):
            variable.assign(value)


# ---- seeds drawn from SeedGenerators, folded per replica ------------------------
#
# Every Keras random op (keras.random.*, Dropout, GaussianNoise, the random
# preprocessing layers) takes its seed from `draw_seed`, which calls
# `SeedGenerator.next()` for a generator. `next` returns the state and advances
# it; under a strategy the state is a mirrored variable with aggregation
# "none", which each replica advances on its own copy by the same increment.
# The override below hands the random op `fold(seed)` instead of the seed
# while `_FOLDING.depth > 0` (inside the framework's replica steps) and leaves
# the state's update alone, so the copies stay equal and a checkpoint of the
# state restores every replica's stream. Like `_PASSTHROUGH` this is a
# process-wide depth: MirroredStrategy traces the replicas in threads of its own.


class _Folding:
    depth = 0
    fold = None


_FOLDING = _Folding()


def install_seed_folding(fold) -> None:
    """Makes `SeedGenerator.next` return `fold(seed)` within `folded_seed_draws` (once per process).

    Args:
      fold: maps a drawn seed (an int tensor of shape [2]) to the seed the
        random op uses; called where the op is traced, so it may read the
        replica context.
    """
    generator = keras.random.SeedGenerator
    if getattr(generator, "_framework_folding", False):
        if _FOLDING.fold is not fold:
            raise RuntimeError("SeedGenerator draws are already folded by another function.")
        return
    original = generator.next

    def next(self, ordered=True):  # noqa: A001 - SeedGenerator's own method name
        seed = original(self, ordered=ordered)
        if _FOLDING.depth > 0:
            return _FOLDING.fold(seed)
        return seed

    next.__doc__ = original.__doc__
    _FOLDING.fold = fold
    generator.next = next
    generator._framework_folding = True


@contextlib.contextmanager
def folded_seed_draws():
    """Within: a random op seeded by a `SeedGenerator` gets the installed fold of its drawn seed."""
    if _FOLDING.fold is None:
        raise RuntimeError("install_seed_folding() must be called before folded_seed_draws().")
    _FOLDING.depth += 1
    try:
        yield
    finally:
        _FOLDING.depth -= 1
