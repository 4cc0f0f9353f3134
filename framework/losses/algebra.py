"""Loss expressions: named, weighted terms combined with `+` and scalar `*`.

    loss = 1.5 * Dice().on("seg") + Term(keras.losses.Huber(), head="depth") + L2(1e-4)
    result = loss(y_true, y_pred, sample_weight, model=model, step=step)
    result.total, result.terms, result.raw

A term's *kind* fixes how it reduces over the global batch: `Term`
(per-example), `BatchTerm` (sums over the batch), `Regularizer` (a function
of the model). See `framework.losses.reduction` for the exact semantics.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from framework.losses.reduction import evaluate
from framework.losses.result import LossResult

Weight = float | Callable[[tf.Tensor], Any]
REDUCTIONS = ("mean_with_sample_weight", "sum_over_batch_size")


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _scale_weight(weight: Weight, factor: float) -> Weight:
    if callable(weight):
        return lambda step: factor * weight(step)
    return factor * weight


class Loss:
    """Base of loss expressions: supports `+`, scalar `*` and `.on(head)`."""

    def flat_terms(self) -> list[Term]:
        """The expression's terms, in the order they were added.

        Returns:
          A list of `Term`s, each carrying its own weight and head.
        """
        raise NotImplementedError

    def on(self, head: str) -> Loss:
        """The same expression reading the model output `head` wherever a term names no head.

        Args:
          head: a key of the model's outputs (and of the labels and sample weights).

        Returns:
          A new `Loss`; terms that already read a head keep theirs.
        """
        return Sum([t.on(head) if t.head is None else t for t in self.flat_terms()])

    def __add__(self, other: Any) -> Loss:
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Loss):
            return NotImplemented
        return Sum(self.flat_terms() + other.flat_terms())

    def __radd__(self, other: Any) -> Loss:  # sum([...]) starts from 0
        return self.__add__(other)

    def __mul__(self, factor: Any) -> Loss:
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            return NotImplemented
        return Sum([t.scaled(factor) for t in self.flat_terms()])

    __rmul__ = __mul__

    def __call__(
        self, y_true: Any, y_pred: Any, sample_weight: Any = None, *, model=None, step=None
    ) -> LossResult:
        """Evaluates every term with global reductions (inside a replica's step, or on one device).

        Args:
          y_true: the batch labels (a dict keyed by head for a multi-output model).
          y_pred: the model's outputs.
          sample_weight: per-example weights (a dict keyed by head, or one for all heads).
          model: the model regularizers read; needed when the loss has one.
          step: the global step, for weight schedules (default 0).

        Returns:
          A `LossResult`: the total to differentiate and the terms' values.

        Raises:
          ValueError, KeyError: a regularizer term without `model`, or labels,
            predictions or weights that do not fit a term (the term is named).
        """
        return evaluate(self.flat_terms(), y_true, y_pred, sample_weight, model=model, step=step)


class Sum(Loss):
    """A sum of terms; build it with `+`.

    Args:
      terms: the terms. Default-named terms that collide on different heads
        are named `<head>/<loss>`.

    Raises:
      ValueError: two terms still have the same name (the name is given).
    """

    def __init__(self, terms: list[Term]):
        self.terms = _unique_names(list(terms))

    def flat_terms(self) -> list[Term]:
        return list(self.terms)

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Term(Loss):
    """A per-example loss term.

    Its value is the weighted mean of per-example (or per-element) values
    over the global batch. Subclasses override `compute(y_true, y_pred)`, or
    `values_and_weights(...)` when some values must not count, and may add
    trace-time input checks in `validate(y_true, y_pred)`.

    Sample weights: by default the term is ``sum(w * l) / sum(w)`` over the
    global batch, the exact weighted mean (Keras calls this reduction
    "mean_with_sample_weight"). Keras losses default to
    "sum_over_batch_size", ``sum(w * l) / number of values``: with weights
    that do not average 1 the two differ (weights all 0.5 give the
    unweighted mean here, half of it in Keras). Pass
    ``reduction="sum_over_batch_size"`` for Keras' objective; the count is
    then the global one, so it stays exact on any number of replicas.
    Without sample weights (or masks) the two are equal.

    Args:
      fn: a `keras.losses.Loss` (its unreduced per-example values are used:
        its own reduction is bypassed), or `fn(y_true, y_pred)` returning
        values with a leading batch axis (or a scalar mean over the batch).
      head: the model output (and label key) this term reads; None for a
        single-output model.
      weight: a number or a schedule `step -> weight` (a Keras
        `LearningRateSchedule` works), evaluated inside the compiled step.
      name: the key in `LossResult.terms`; default: the head, else the
        loss's own name.
      mask_nan: examples whose label holds NaN count as missing (weight 0).
      reduction: "mean_with_sample_weight" (default: divide by the global
        sum of weights) or "sum_over_batch_size" (divide by the global
        number of values, masked ones included, as Keras does).

    Raises:
      TypeError: `fn` or `weight` is not usable.
      ValueError: an unknown `reduction`.
    """

    kind = "per_example"
    # False: labels reach the term in their own dtype (e.g. int64 class ids),
    # not cast to float32.
    cast_labels = True
    # False: the term reads only predictions (`PredictionTerm`); its head needs no labels.
    reads_labels = True

    def __init__(
        self,
        fn: Callable | keras.losses.Loss | None = None,
        *,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
        reduction: str = "mean_with_sample_weight",
    ):
        if fn is None and self.kind == "per_example" and not self._defines_values():
            raise TypeError("Term needs a loss: Term(keras.losses.X()) or Term(fn).")
        if fn is not None and not callable(fn):
            raise TypeError(f"Term expects a keras loss or a callable, got {fn!r}.")
        if not callable(weight) and not isinstance(weight, (int, float)):
            raise TypeError(f"Term weight must be a number or a schedule, got {weight!r}.")
        self.fn = fn
        self.head = head
        self.weight = weight
        self._name = name
        self.mask_nan = mask_nan
        if reduction not in REDUCTIONS:
            raise ValueError(f"Term reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction

    @classmethod
    def _defines_values(cls) -> bool:
        return cls.compute is not Term.compute or cls.values_and_weights is not Term.values_and_weights

    @property
    def base_name(self) -> str:
        """The name the term has before `named()` and heads: the Keras loss's, the function's or the class's."""
        if isinstance(self.fn, keras.losses.Loss):
            return self.fn.name
        if self.fn is not None:
            return getattr(self.fn, "__name__", type(self.fn).__name__)
        return snake_case(type(self).__name__)

    @property
    def name(self) -> str:
        """The key of this term in `LossResult.terms` and in logs (`loss/<name>`)."""
        return self._name or self.head or self.base_name

    def flat_terms(self) -> list[Term]:
        """`[self]`: a term is an expression of one term."""
        return [self]

    def _copy(self, **changes) -> Term:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    def on(self, head: str) -> Term:
        """This term reading the model output `head` (and its labels and sample weights).

        Args:
          head: a key of the model's outputs.

        Returns:
          A copy of the term; the original is unchanged.
        """
        return self._copy(head=head)

    def scaled(self, factor: float) -> Term:
        """This term with its weight multiplied by `factor` (what `factor * term` does).

        Args:
          factor: a number; a schedule weight is multiplied at every step.

        Returns:
          A copy of the term; its raw value is logged as `loss/<name>/raw` when the weight is not 1.
        """
        return self._copy(weight=_scale_weight(self.weight, factor))

    def named(self, name: str) -> Term:
        """This term under another name in `LossResult.terms` and logs.

        Args:
          name: the new key (`loss/<name>`); names must be unique in a loss.

        Returns:
          A copy of the term.
        """
        return self._copy(_name=name)

    def weight_at(self, step: tf.Tensor) -> tf.Tensor:
        """The term's weight at `step`: the number, or the schedule evaluated there.

        Args:
          step: the train step (a tensor or variable).

        Returns:
          A float32 scalar.

        Raises:
          ValueError: the schedule returned a non-scalar (the term is named).
        """
        if not callable(self.weight):
            return tf.constant(float(self.weight), tf.float32)
        value = tf.cast(self.weight(tf.convert_to_tensor(step)), tf.float32)  # step may be a variable
        if value.shape.rank != 0:
            raise ValueError(
                f"Loss term {self.name!r}: its weight schedule returned shape {value.shape}; "
                "a schedule must return a scalar."
            )
        return value

    def compute(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """Per-example (or per-element) values, float32."""
        if isinstance(self.fn, keras.losses.Loss):
            return self.fn.call(y_true, y_pred)
        return self.fn(y_true, y_pred)

    def values_and_weights(
        self, y_true: tf.Tensor, y_pred: tf.Tensor, sample_weight: tf.Tensor | None
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Values and the weights of their global weighted mean.

        The term is ``sum(weights * values) / sum(weights)`` over the global
        batch, the denominator all-reduced. The default returns `compute()`
        and the sample weight (None: every value counts once). Override it
        when some values must not count: a ranking list without a valid
        pair, an anchor without a positive. Returned weights must already
        include `sample_weight` (float32, None or a tensor that broadcasts
        like it) and must not need a gradient.
        """
        return self.compute(y_true, y_pred), sample_weight

    def validate(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
        """Trace-time checks on this term's labels and predictions, before any cast.

        Raise an error that starts with ``Loss term {self.name!r}``. Default: none.
        """
        del y_true, y_pred  # (a body besides the docstring keeps AutoGraph happy)

    def __repr__(self) -> str:
        head = f".on({self.head!r})" if self.head else ""
        weight = "" if self.weight == 1.0 else f"{self.weight!r} * "
        return f"{weight}{type(self).__name__}({self.name!r}){head}"


class PredictionTerm(Term):
    """A per-example term that reads only the model's outputs: no labels (a VAE's KL, an auxiliary loss).

    `fn(y_pred)` returns values with a leading batch axis (or a scalar mean
    over the batch). It reduces, weighs and logs like a `Term`: the mean
    over the global batch, with the batch's sample weights of its head.
    Its head needs no labels in the batch.

    Args:
      fn: `fn(y_pred) -> values`; `y_pred` is the output of `head`, or,
        with no head, the model's output (the dict of outputs of a model
        with named outputs).
      head: the model output the term reads; None: the whole output.
      weight: as for `Term`.
      name: as for `Term`.
      reduction: as for `Term`.

    Raises:
      TypeError: `fn` is not callable.
    """

    reads_labels = False

    def __init__(
        self,
        fn: Callable[[Any], tf.Tensor],
        *,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        reduction: str = "mean_with_sample_weight",
    ):
        if not callable(fn):
            raise TypeError(f"PredictionTerm expects fn(y_pred), got {fn!r}.")
        super().__init__(fn, head=head, weight=weight, name=name, reduction=reduction)

    def compute(self, y_true: None, y_pred: Any) -> tf.Tensor:
        """`fn(y_pred)`; `y_true` is always None."""
        del y_true
        return self.fn(y_pred)


class BatchTerm(Term):
    """A term computed from sums over the whole global batch.

    Subclasses define `statistics(y_true, y_pred, sample_weight)` returning a
    nest of tensors that add up across replicas, and
    `from_statistics(stats)` returning the scalar loss.
    """

    kind = "batch"

    def statistics(self, y_true, y_pred, sample_weight):
        """This replica's sufficient statistics, summed over replicas before `from_statistics`.

        Args:
          y_true: the head's labels on this replica.
          y_pred: the head's predictions on this replica.
          sample_weight: the head's sample weights, or None.

        Returns:
          A nest of float32 tensors whose sums over replicas give the global batch's statistics.
        """
        raise NotImplementedError

    def from_statistics(self, stats) -> tf.Tensor:
        """The loss of the global batch from its summed statistics.

        Args:
          stats: `statistics()`'s nest, summed over every replica.

        Returns:
          A float32 scalar.
        """
        raise NotImplementedError

    def compute(self, y_true, y_pred):  # a BatchTerm is not per-example
        raise NotImplementedError


def _unique_names(terms: list[Term]) -> list[Term]:
    """Qualifies colliding default names as `head/loss`; rejects other duplicates."""
    counts: dict[str, int] = {}
    for term in terms:
        counts[term.name] = counts.get(term.name, 0) + 1
    renamed = [
        term.named(f"{term.head}/{term.base_name}")
        if counts[term.name] > 1 and term._name is None and term.head is not None
        else term
        for term in terms
    ]
    seen: set[str] = set()
    for term in renamed:
        if term.name in seen:
            raise ValueError(f"Two loss terms are named {term.name!r}; give one a name with .named(...).")
        seen.add(term.name)
    return renamed
