"""Evaluating a loss: every term once, with reductions over the global batch.

A loss is a sum of terms. Each term has a kind that fixes how it reduces over
the global batch when the batch is split across replicas:

* per-example (`Term`): the term returns values with a leading batch axis
  (one per example, or per element) and weights (default: the sample
  weight broadcast to the values, or 1). The term is ``sum(w * l) / sum(w)``
  over the *global* batch: the numerator stays local, the denominator is
  all-reduced, so a replica holding few weighted examples is not
  over-counted, and a head whose labels are masked out (weight 0, or NaN
  labels with ``mask_nan=True``) neither contributes nor dilutes the mean.
  Terms whose mean runs over something else override
  `Term.values_and_weights`: `RankNet` gives a list without a valid pair
  weight 0 (the mean is over lists that have one), `Triplet` one value per
  own anchor weighted by its count of triplets, mined over the all-gathered
  global batch, `NTXent` one value per own view against the gathered
  views. A function that returns a scalar is taken to be the mean
  over its replica's examples and weighted by their count. With
  ``reduction="sum_over_batch_size"`` (Keras' default) the denominator is
  the global number of values instead of the sum of weights. A
  `PredictionTerm` reduces the same way; it reads no labels.
* batch-level (`BatchTerm`): the term is a function of sums over the batch
  (Dice: sum(y*p), sum(y), sum(p)). The sums are all-reduced before the
  ratio, so every replica sees the statistics of the whole global batch.
* regularizer (`Regularizer`): a function of the model, counted once per
  step whatever the number of replicas (each replica's share is 1/N).
  `ModelLosses` (the layers' own losses) is one: in means over steps it
  weighs the step's global number of examples, as Keras' loss tracker does.

Inside `strategy.run` each replica differentiates its *share* of the total;
the optimizer sums gradients over replicas, which yields the gradient of the
global loss exactly. Because the gradient of an all-reduce sums the upstream
gradients of all replicas, a batch-level term's share is its value divided by
the replica count (likewise, an all-gather's gradient sums every replica's
upstream gradient and hands each replica its own slice: `framework.gather`
derives that rule and the other one, for a loss every replica computes
whole). The values a
`LossResult` exposes are the global ones (equal on every replica); `total`
and `terms` still carry the share's gradient. With one replica none of this
costs anything.

The denominators (the global weight sums or counts; 1 for batch-level terms
and regularizers) come back in `LossResult.denominators`: logged means over
steps weigh each step by them (`framework.log_values`).

Before anything is reduced, `Term.validate` checks each term's labels and
predictions at trace time (in their own dtypes); then both are cast to
float32 whatever the dtype policy (labels stay as they are for terms with
``cast_labels = False``, e.g. `Triplet`'s integer ids).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from framework import distribute, heads
from framework.log_values import batch_examples
from framework.losses.result import LossResult

_EXAMPLES = "\0examples"  # a key no term can have


def _owner(term) -> str:
    return f"Loss term {term.name!r}"


def _float32(x: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def broadcast_weight(weight: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """`weight` ([batch], [batch, 1], ...) broadcast to the shape of `values`."""
    while weight.shape.rank > values.shape.rank and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, -1)
    while weight.shape.rank < values.shape.rank:
        weight = tf.expand_dims(weight, -1)
    return tf.broadcast_to(weight, tf.shape(values))


def _with_nan_mask(term, y_true, weight):
    if not (term.mask_nan and y_true.dtype.is_floating):
        return y_true, weight
    y_true, valid = heads.nan_mask(y_true)
    return y_true, valid if weight is None else weight * broadcast_weight(valid, weight)


def _per_example_parts(term, y_true, y_pred, weight):
    """(local weighted sum, local denominator) of a per-example term.

    The denominator is the sum of weights, or with
    ``reduction="sum_over_batch_size"`` the number of values.
    """
    y_true, weight = _with_nan_mask(term, y_true, weight)
    values, weight = term.values_and_weights(y_true, y_pred, weight)
    values = _float32(values)
    if values.shape.rank == 0:  # a mean over this replica's examples
        count = tf.cast(tf.shape(tf.nest.flatten(y_pred)[0])[0], tf.float32)
        if weight is not None:
            raise ValueError(
                f"Loss term {term.name!r} returns a scalar, so sample weights or masks cannot "
                "be applied; return per-example values instead."
            )
        return tf.where(count > 0, values * count, 0.0), count
    count = values.shape.num_elements()  # static when known: one op less per step
    count = float(count) if count is not None else tf.cast(tf.size(values), tf.float32)
    if weight is None:
        return tf.reduce_sum(values), count
    weight = broadcast_weight(tf.stop_gradient(_float32(weight)), values)
    if term.reduction == "sum_over_batch_size":
        return tf.reduce_sum(values * weight), count
    return tf.reduce_sum(values * weight), tf.reduce_sum(weight)


def _check_shapes(term, y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
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
    whole = not term.reads_labels and term.head is None and isinstance(y_pred, dict)
    y_p = y_pred if whole else heads.output(y_pred, term.head, _owner(term))
    weight = (
        heads.sample_weight(sample_weight, term.head, _owner(term)) if sample_weight is not None else None
    )
    weight = None if weight is None else _float32(weight)
    if not term.reads_labels:
        y_p = tf.nest.map_structure(tf.convert_to_tensor, y_p)
        term.validate(None, y_p)
        return _per_example_parts(term, None, tf.nest.map_structure(_float32, y_p), weight)
    y_t = heads.labels(y_true, term.head, _owner(term))
    if y_t is None:
        raise ValueError(f"Loss term {term.name!r} has no labels in the batch (head {term.head!r}).")
    y_p, y_t = tf.convert_to_tensor(y_p), tf.convert_to_tensor(y_t)
    term.validate(y_t, y_p)
    y_p = _float32(y_p)
    y_t = _float32(y_t) if term.cast_labels else y_t
    _check_shapes(term, y_t, y_p)
    if term.kind == "batch":
        y_t, weight = _with_nan_mask(term, y_t, weight)
        return term.statistics(y_t, y_p, weight), None
    return _per_example_parts(term, y_t, y_p, weight)


def _describe_error(term, y_true, y_pred, error: Exception) -> Exception:
    def shape(v):
        try:
            return tuple(heads.labels(v, term.head, _owner(term)).shape)
        except Exception:  # noqa: BLE001 - only used to build a message
            return "?"

    head = f" on head {term.head!r}" if term.head else ""
    message = (
        f"Loss term {term.name!r}{head} failed with labels of shape {shape(y_true)} and "
        f"predictions of shape {shape(y_pred)}: {error}"
    )
    if isinstance(error, tf.errors.OpError):  # eager op errors: same class, same node
        return type(error)(error.node_def, error.op, message)
    return type(error)(message)


def evaluate(terms, y_true, y_pred, sample_weight=None, *, model=None, step=None) -> LossResult:
    """Computes every term once, with global reductions; see module docstring."""
    replicas = distribute.num_replicas()
    step = tf.constant(0, tf.int64) if step is None else step
    local = {}
    # Regularizers first: `model.losses` holds the activity losses of the
    # model's *last* call, and under MirroredStrategy replicas run as
    # threads that switch at every collective (Triplet's all-gather): read
    # after one, it could hold another replica's losses.
    for term in sorted(terms, key=lambda t: t.kind != "regularizer"):
        try:
            local[term.name] = _local_parts(term, y_true, y_pred, sample_weight, model)
        except (KeyError, ValueError, TypeError) as e:
            if e.args and str(e.args[0]).startswith("Loss term"):  # already names the term
                raise
            raise _describe_error(term, y_true, y_pred, e) from e
        except tf.errors.InvalidArgumentError as e:
            raise _describe_error(term, y_true, y_pred, e) from e

    # One all-reduce for every denominator and batch statistic.
    to_reduce = {}
    by_examples = [t for t in terms if getattr(t, "weigh_by_examples", False)]
    if by_examples:
        to_reduce[_EXAMPLES] = batch_examples(y_pred)  # this replica's
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
    weighted = {t.name: raw[t.name] if t.weight == 1.0 else t.weight_at(step) * raw[t.name] for t in terms}
    total = (
        tf.add_n(list(weighted.values()))
        if len(weighted) > 1
        else next(iter(weighted.values()), tf.constant(0.0))
    )
    one = tf.constant(1.0)
    denominators = {t.name: reduced[t.name] if t.kind == "per_example" else one for t in terms}
    denominators.update({t.name: reduced[_EXAMPLES] for t in by_examples})
    return LossResult(total=total, terms=weighted, raw=raw, denominators=denominators)
