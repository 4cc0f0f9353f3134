"""Loss expressions: named, weighted terms whose reductions are global.

A loss is a sum of terms. Each term has a kind that fixes how it reduces over
the global batch when the batch is split across replicas:

* per-example (`Term`): the wrapped function returns one value per example
  (or per element). The term is ``sum(w * l) / sum(w)`` over the *global*
  batch, where ``w`` is the sample weight broadcast to the values (1 without
  weights). The denominator is all-reduced, so a replica holding few weighted
  examples is not over-counted, and a head whose labels are masked out
  (weight 0) neither contributes nor dilutes the mean. A function that
  returns a scalar is taken to be the mean over its replica's examples.
* batch-level (`BatchTerm`): the term is a function of sums over the batch
  (Dice: sum(y*p), sum(y), sum(p)). The sums are all-reduced before the
  ratio, so every replica sees the statistics of the whole global batch.
* regularizer (`Regularizer`): a function of the model, counted once per
  step whatever the number of replicas.

Inside `strategy.run` each replica differentiates its *share* of the total;
the optimizer sums gradients over replicas, which yields the gradient of the
global loss exactly. Because the gradient of an all-reduce sums the upstream
gradients of all replicas, a batch-level term's share is its value divided by
the replica count. The values a `LossResult` exposes are the global ones
(equal on every replica); `total` and `terms` still carry the share's
gradient. With one replica none of this costs anything.

Terms compute in float32 whatever the dtype policy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from framework import distribute

Weight = float | Callable[[tf.Tensor], Any]


@dataclasses.dataclass
class LossResult:
    """What calling a loss returns.

    total: scalar float32, the global loss; its gradient is this replica's
      share (see module docstring).
    terms: name -> weighted global value; they sum to `total`.
    raw: name -> unweighted global value.
    """

    total: tf.Tensor
    terms: dict[str, tf.Tensor]
    raw: dict[str, tf.Tensor]

    def logs(self, prefix: str = "") -> dict[str, tf.Tensor]:
        """`loss`, `loss/<term>` and `loss/<term>/raw`, for logging."""
        out = {f"{prefix}loss": tf.stop_gradient(self.total)}
        for name, value in self.terms.items():
            out[f"{prefix}loss/{name}"] = tf.stop_gradient(value)
            out[f"{prefix}loss/{name}/raw"] = tf.stop_gradient(self.raw[name])
        return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _scale_weight(weight: Weight, factor: float) -> Weight:
    if callable(weight):
        return lambda step: factor * weight(step)
    return factor * weight


class Loss:
    """Base of loss expressions: supports `+`, scalar `*` and `.on(head)`."""

    def flat_terms(self) -> list[Term]:
        raise NotImplementedError

    def on(self, head: str) -> Loss:
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
        return evaluate(self.flat_terms(), y_true, y_pred, sample_weight, model=model, step=step)


class Sum(Loss):
    """A sum of terms; build it with `+`."""

    def __init__(self, terms: list[Term]):
        self.terms = _unique_names(list(terms))

    def flat_terms(self) -> list[Term]:
        return list(self.terms)

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Term(Loss):
    """A per-example loss term.

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
    """

    kind = "per_example"

    def __init__(
        self,
        fn: Callable | keras.losses.Loss | None = None,
        *,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
    ):
        if fn is None and self.kind == "per_example" and type(self).compute is Term.compute:
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

    @property
    def base_name(self) -> str:
        if isinstance(self.fn, keras.losses.Loss):
            return self.fn.name
        if self.fn is not None:
            return getattr(self.fn, "__name__", type(self.fn).__name__)
        return _snake(type(self).__name__)

    @property
    def name(self) -> str:
        return self._name or self.head or self.base_name

    def flat_terms(self) -> list[Term]:
        return [self]

    def _copy(self, **changes) -> Term:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    def on(self, head: str) -> Term:
        return self._copy(head=head)

    def scaled(self, factor: float) -> Term:
        return self._copy(weight=_scale_weight(self.weight, factor))

    def named(self, name: str) -> Term:
        return self._copy(_name=name)

    def weight_at(self, step: tf.Tensor) -> tf.Tensor:
        if not callable(self.weight):
            return tf.constant(float(self.weight), tf.float32)
        value = tf.cast(self.weight(step), tf.float32)
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

    def __repr__(self) -> str:
        head = f".on({self.head!r})" if self.head else ""
        weight = "" if self.weight == 1.0 else f"{self.weight!r} * "
        return f"{weight}{type(self).__name__}({self.name!r}){head}"


class BatchTerm(Term):
    """A term computed from sums over the whole global batch.

    Subclasses define `statistics(y_true, y_pred, sample_weight)` returning a
    nest of tensors that add up across replicas, and
    `from_statistics(stats)` returning the scalar loss.
    """

    kind = "batch"

    def statistics(self, y_true, y_pred, sample_weight):
        raise NotImplementedError

    def from_statistics(self, stats) -> tf.Tensor:
        raise NotImplementedError

    def compute(self, y_true, y_pred):  # a BatchTerm is not per-example
        raise NotImplementedError


class Regularizer(Term):
    """A term computed from the model, counted once per step.

    `Regularizer(fn)` wraps `fn(model) -> scalar`; subclasses may override
    `regularization(model)` instead.
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
        return _snake(type(self).__name__)

    def on(self, head: str) -> Term:
        return self  # regularizers read the model, not a head

    def regularization(self, model: keras.Model) -> tf.Tensor:
        return self.reg_fn(model)


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


# ---- evaluation --------------------------------------------------------------


def _select(value: Any, head: str | None, what: str, term: Term) -> Any:
    if isinstance(value, dict):
        if head is None:
            if len(value) == 1:
                return next(iter(value.values()))
            raise ValueError(
                f"Loss term {term.name!r} has no head, but the {what} has heads "
                f"{sorted(value)}; attach it with .on(<head>)."
            )
        if head not in value:
            raise KeyError(
                f"Loss term {term.name!r} reads head {head!r}, but the {what} has heads {sorted(value)}."
            )
        return value[head]
    if head is not None and value is not None and what == "model output":
        raise KeyError(
            f"Loss term {term.name!r} reads head {head!r}, but the model has a single "
            "unnamed output; drop .on(...) or give the model named outputs."
        )
    return value


def _float32(x: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _match_rank(weight: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    while weight.shape.rank > values.shape.rank and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, -1)
    while weight.shape.rank < values.shape.rank:
        weight = tf.expand_dims(weight, -1)
    return tf.broadcast_to(weight, tf.shape(values))


def _nan_mask(y_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels with NaN replaced by 0, per-example weight 0 where any NaN)."""
    finite = tf.math.is_finite(y_true)
    if y_true.shape.rank > 1:
        valid = tf.reduce_all(finite, axis=list(range(1, y_true.shape.rank)))
    else:
        valid = finite
    return tf.where(finite, y_true, tf.zeros_like(y_true)), tf.cast(valid, tf.float32)


def _per_example_parts(term, y_true, y_pred, weight):
    """(local weighted sum, local weight sum) of a per-example term."""
    if term.mask_nan:
        y_true, valid = _nan_mask(y_true)
        weight = valid if weight is None else _float32(weight) * _match_rank(valid, _float32(weight))
    values = _float32(term.compute(y_true, y_pred))
    if values.shape.rank == 0:  # a mean over this replica's examples
        count = tf.cast(tf.shape(y_pred)[0], tf.float32)
        if weight is not None:
            raise ValueError(
                f"Loss term {term.name!r} returns a scalar, so sample weights or masks cannot "
                "be applied; return per-example values instead."
            )
        return tf.where(count > 0, values * count, 0.0), count
    if weight is None:
        return tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)
    weight = _match_rank(_float32(weight), values)
    return tf.reduce_sum(values * weight), tf.reduce_sum(weight)


def _check_shapes(term: Term, y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
    """Rejects labels that would silently broadcast against predictions.

    Same-rank labels and predictions must agree in every known non-batch
    dimension, except a label dimension of 1 (sparse class ids).
    """
    if y_true.shape.rank is None or y_true.shape.rank != y_pred.shape.rank:
        return
    for got, expected in zip(y_true.shape[1:], y_pred.shape[1:]):
        if got is not None and expected is not None and got != expected and got != 1:
            head = f" on head {term.head!r}" if term.head else ""
            raise ValueError(
                f"Loss term {term.name!r}{head}: labels of shape {tuple(y_true.shape)} do not "
                f"match predictions of shape {tuple(y_pred.shape)}."
            )


def _local_parts(term, y_true, y_pred, sample_weight, model):
    if term.kind == "regularizer":
        if model is None:
            raise ValueError(f"Loss term {term.name!r} is a regularizer: pass model=.")
        return _float32(term.regularization(model)), None
    y_p = _select(y_pred, term.head, "model output", term)
    y_t = _select(y_true, term.head, "batch labels", term)
    if y_t is None:
        raise ValueError(f"Loss term {term.name!r} has no labels in the batch (head {term.head!r}).")
    weight = _select(sample_weight, term.head, "sample_weight", term) if sample_weight is not None else None
    y_p, y_t = _float32(y_p), _float32(y_t)
    _check_shapes(term, y_t, y_p)
    if term.kind == "batch":
        if term.mask_nan:
            y_t, valid = _nan_mask(y_t)
            weight = valid if weight is None else _float32(weight) * valid
        return term.statistics(y_t, y_p, weight), None
    return _per_example_parts(term, y_t, y_p, weight)


def _describe_error(term: Term, y_true, y_pred, error: Exception) -> Exception:
    def shape(v):
        try:
            return tuple(_select(v, term.head, "x", term).shape)
        except Exception:  # noqa: BLE001 - only used to build a message
            return "?"

    head = f" on head {term.head!r}" if term.head else ""
    return type(error)(
        f"Loss term {term.name!r}{head} failed with labels of shape {shape(y_true)} and "
        f"predictions of shape {shape(y_pred)}: {error}"
    )


def evaluate(terms, y_true, y_pred, sample_weight=None, *, model=None, step=None) -> LossResult:
    """Computes every term once, with global reductions; see module docstring."""
    replicas = distribute.num_replicas()
    step = tf.constant(0, tf.int64) if step is None else step
    local = {}
    for term in terms:
        try:
            local[term.name] = _local_parts(term, y_true, y_pred, sample_weight, model)
        except (KeyError, ValueError, TypeError) as e:
            if str(e).startswith("Loss term"):
                raise
            raise _describe_error(term, y_true, y_pred, e) from e
        except tf.errors.InvalidArgumentError as e:
            raise _describe_error(term, y_true, y_pred, e) from e

    # One all-reduce for every denominator and batch statistic.
    to_reduce = {}
    for term in terms:
        first, second = local[term.name]
        if term.kind == "per_example":
            to_reduce[term.name] = tf.stop_gradient(second)
        elif term.kind == "batch":
            to_reduce[term.name] = first
    reduced = distribute.all_reduce_sum(to_reduce)

    shares = {}
    for term in terms:
        first, _ = local[term.name]
        if term.kind == "per_example":
            shares[term.name] = tf.math.divide_no_nan(first, reduced[term.name])
        elif term.kind == "batch":
            shares[term.name] = _float32(term.from_statistics(reduced[term.name])) / replicas
        else:
            shares[term.name] = first / replicas

    raw = dict(shares)
    if replicas > 1:
        globals_ = distribute.all_reduce_sum({k: tf.stop_gradient(v) for k, v in shares.items()})
        raw = {k: shares[k] + tf.stop_gradient(globals_[k] - shares[k]) for k in shares}
    weighted = {t.name: t.weight_at(step) * raw[t.name] for t in terms}
    total = tf.add_n(list(weighted.values())) if weighted else tf.constant(0.0)
    return LossResult(total=total, terms=weighted, raw=raw)
