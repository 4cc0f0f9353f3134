"""Gradient application: replicas agree on finiteness before any update.

`apply(optimizer, grads, variables, loss)` runs in replica context. The
update happens on every replica or on none:

* float32/bfloat16: the step is skipped everywhere when the loss or any
  gradient is non-finite on any replica;
* float16 (`LossScaleOptimizer`): Keras decides from replica 0's gradients
  only (under `MirroredStrategy` an overflow on replica 1 alone would write
  inf into every replica's weights). We agree on finiteness across replicas
  and make every replica's gradients non-finite when any one is, so Keras
  skips the step and halves the scale everywhere.

Returns whether the loss and gradients were finite on all replicas.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from framework import distribute


def all_finite(grads) -> tf.Tensor:
    """One cheap reduction: a sum is finite iff every term is (barring overflow)."""
    sums = [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None]
    return tf.math.is_finite(tf.add_n(sums))


def apply(optimizer: keras.optimizers.Optimizer, grads, variables, loss: tf.Tensor) -> tf.Tensor:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return _apply_scaled(optimizer, grads, variables, loss)
    finite = distribute.all_true(tf.logical_and(tf.math.is_finite(loss), all_finite(grads)))
    _apply_if(finite, optimizer, grads, variables)
    return finite


def _apply_if(finite: tf.Tensor, optimizer, grads, variables) -> None:
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1 or tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: optimizer.apply(grads, variables), lambda: None)
        return

    # MirroredStrategy's update needs a merge_call, which cannot sit inside a
    # replica-context cond: branch in cross-replica context instead.
    def cross_replica(strategy, grads, finite):
        decided = strategy.experimental_local_results(finite)[0]

        def update():
            strategy.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

        tf.cond(decided, update, lambda: None)

    context.merge_call(cross_replica, args=(grads, finite))


def _apply_scaled(optimizer, grads, variables, loss) -> tf.Tensor:
    finite_loss = distribute.all_true(tf.math.is_finite(loss))
    if distribute.num_replicas() > 1:
        everywhere = distribute.all_true(all_finite(grads))
        poison = tf.where(tf.logical_and(everywhere, finite_loss), 0.0, float("nan"))
        index = next(i for i, g in enumerate(grads) if g is not None)
        grads = list(grads)
        grads[index] = grads[index] + tf.cast(poison, grads[index].dtype)
    optimizer.apply(grads, variables)
    return finite_loss
