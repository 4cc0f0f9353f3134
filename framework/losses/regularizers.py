"""Regularizer terms: functions of the model, counted once per step."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from framework.losses.algebra import Regularizer, Weight

Selector = Callable[[keras.Variable], bool]


def kernels(variable: keras.Variable) -> bool:
    """Default selector: weight matrices and filters, never biases or norm scales."""
    return variable.name.endswith("kernel") or variable.name == "embeddings"


class _Norm(Regularizer):
    def __init__(self, rate: float, *, select: Selector = kernels, name: str | None = None):
        if not rate >= 0:
            raise ValueError(f"{type(self).__name__}: rate must be >= 0, got {rate!r}.")
        super().__init__(name=name)
        self.rate = float(rate)
        self.select = select

    def _selected(self, model: keras.Model) -> list:
        chosen = [v for v in model.trainable_variables if self.select(v)]
        if not chosen:
            raise ValueError(
                f"{type(self).__name__} regularizer selected no variables of model "
                f"{model.name!r}; pass select= to choose them."
            )
        return chosen

    def penalty(self, value: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def regularization(self, model: keras.Model) -> tf.Tensor:
        total = tf.add_n([self.penalty(tf.cast(v, tf.float32)) for v in self._selected(model)])
        return self.rate * total


class L2(_Norm):
    """`rate * sum(v**2)` over the selected variables (Keras' L2 convention).

    Args:
      rate: the factor, >= 0.
      select: `variable -> bool`, which trainable variables count (default
        `kernels`: weight matrices, filters and embeddings).
      name: the key in `LossResult.terms`; default "l2".

    Raises:
      ValueError: `rate` is negative; when the loss is first called, `select`
        chose no variable (the model is named).
    """

    def penalty(self, value):
        return tf.reduce_sum(tf.square(value))


class L1(_Norm):
    """`rate * sum(|v|)` over the selected variables.

    Args:
      rate: as for `L2`.
      select: as for `L2`.
      name: the key in `LossResult.terms`; default "l1".

    Raises:
      ValueError: as for `L2`.
    """

    def penalty(self, value):
        return tf.reduce_sum(tf.abs(value))


class ModelLosses(Regularizer):
    """The losses layers add themselves (`model.losses`: kernel/activity regularizers).

    Counted once per step like any regularizer: each replica's share is its
    `model.losses` / N. Weight regularizers (`kernel_regularizer=...`) are
    the same on every replica, so this is exact. Activity regularizers and
    `add_loss` values depend on the replica's shard (Keras divides activity
    penalties by the *local* batch size): the term is then the mean of the
    replicas' values, which equals the one-device value when the shards
    have equal sizes. Keep the ModelLosses read right after the forward
    pass: `model.losses` holds the losses of the model's last call.

    Args:
      weight: a number or a schedule `step -> weight`, as for `Term`.
      name: the key in `LossResult.terms`; default "model_losses".
    """

    def __init__(self, *, weight: Weight = 1.0, name: str | None = None):
        super().__init__(weight=weight, name=name)

    def regularization(self, model: keras.Model) -> tf.Tensor:
        found = model.losses
        if not found:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(v, tf.float32) for v in found])
