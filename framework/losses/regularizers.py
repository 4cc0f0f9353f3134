"""Regularizer terms: functions of the model, counted once per step."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from framework.losses.algebra import Loss, Term, Weight, snake_case

Selector = Callable[[keras.Variable], bool]


class Regularizer(Term):
    """A term computed from the model, counted once per step.

    `Regularizer(fn)` wraps `fn(model) -> scalar`; subclasses may override
    `regularization(model)` instead.

    Args:
      fn: `model -> scalar` penalty; None in a subclass that overrides `regularization`.
      weight: a number or a schedule `step -> weight`, as for `Term`.
      name: the key in `LossResult.terms`; default: `fn`'s name, else the class's.

    Raises:
      TypeError: no `fn` and `regularization` is not overridden.
    """

    kind = "regularizer"

    def __init__(self, fn: Callable | None = None, *, weight: Weight = 1.0, name: str | None = None):
        if fn is None and type(self).regularization is Regularizer.regularization:
            raise TypeError("Regularizer needs fn(model) -> scalar.")
        super().__init__(None, weight=weight, name=name)
        self.reg_fn = fn

    @property
    def base_name(self) -> str:
        if self.reg_fn is not None:
            return getattr(self.reg_fn, "__name__", "regularizer")
        return snake_case(type(self).__name__)

    def on(self, head: str) -> Term:
        """`self`: a regularizer reads the model, not a head."""
        return self

    def regularization(self, model: keras.Model) -> tf.Tensor:
        """The penalty for `model`'s current variables, counted once per step.

        Args:
          model: the model the objective trains.

        Returns:
          A scalar (cast to float32 by the caller).
        """
        return self.reg_fn(model)


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
    """The losses layers add themselves (`model.losses`): kernel and activity regularizers, `add_loss`.

    `Trainer.compute_loss` adds this term by itself when the model has layer
    losses and the loss holds none (`with_layer_losses`); a loss that holds
    one (e.g. `ModelLosses(weight=0.0)` to leave them out) is taken as it is.

    Keras' reduction: each replica's share is its `model.losses` / N, so the
    term is the mean of the replicas' values. Weight regularizers
    (`kernel_regularizer=...`) are the same on every replica: exact.
    Activity regularizers (Keras divides them by the replica's batch size)
    and `add_loss` values depend on the replica's shard: their mean equals
    the one-device value when the shards have equal sizes, as in Keras'
    `fit`. In means over steps a step weighs its number of examples, as in
    Keras' loss tracker, so `evaluate()` does not depend on the batch size.
    Keep the ModelLosses read right after the forward pass: `model.losses`
    holds the losses of the model's last call.

    Args:
      weight: a number or a schedule `step -> weight`, as for `Term`.
      name: the key in `LossResult.terms`; default "model_losses".
    """

    weigh_by_examples = True

    def __init__(self, *, weight: Weight = 1.0, name: str | None = None):
        super().__init__(weight=weight, name=name)

    def regularization(self, model: keras.Model) -> tf.Tensor:
        found = model.losses
        if not found:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(v, tf.float32) for v in found])


def with_layer_losses(loss: Loss, model: keras.Model | None) -> Loss:
    """`loss` plus `ModelLosses()` when `model` has layer losses and `loss` counts none itself.

    Call it after the model's forward pass (activity regularizers and
    `add_loss` values exist only then).

    Args:
      loss: the loss to complete.
      model: the model whose `model.losses` the objective includes; None: none.

    Returns:
      `loss`, or `loss + ModelLosses()`.
    """
    if model is None or any(isinstance(t, ModelLosses) for t in loss.flat_terms()):
        return loss
    return loss + ModelLosses() if model.losses else loss
