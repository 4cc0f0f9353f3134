"""Log values that average exactly: each step's value carries the weight it has in a mean.

A step returns scalar logs. Over the steps of a log interval, an epoch or an
evaluation (and over replicas), a log is averaged as ``sum(v * w) / sum(w)``,
so the mean is the one a single batch holding all those examples would give:

* `Weighted(value, weight)`: `weight` is the step's denominator. A loss
  term's logs use the global sum of its example weights (its number of
  values without sample weights), or the global number of values for
  ``reduction="sum_over_batch_size"``; batch-level terms and regularizers
  weigh 1 per step.
* `WeightedSum(parts)`: a sum of weighted means, each averaged with its own
  weights, then added (a loss's total: the mean of `loss` is the sum of its
  terms' means).
* A plain tensor: a per-replica value weighted by the replica's number of
  examples (the leading dimension of the batch's first tensor), so a mean
  over a batch averages to the mean over examples.

Inside the compiled loop the logs of a step are packed into one flat
``[2 * parts]`` tensor (the ``v * w`` of every part, then every ``w``),
averaged over replicas with one all-reduce and summed over steps with one
add; `Layout.unpack` names the parts again on the host, as ``[2, k]``
arrays. Packing is a few ops per step: one stack, and one multiply per part
whose weight is not the constant 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf


class Weighted(NamedTuple):
    """A scalar log value and its weight in means over steps and replicas (see module docstring)."""

    value: Any
    weight: Any


class WeightedSum(NamedTuple):
    """A log that is the sum of weighted means; `value` is this step's sum."""

    parts: tuple[Weighted, ...]

    @property
    def value(self) -> tf.Tensor:
        return tf.add_n([tf.convert_to_tensor(p.value) for p in self.parts])


def _scalar(value: Any, key: str, where: str) -> tf.Tensor:
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 0:
        raise ValueError(f"{where} returned log {key!r} with shape {value.shape}; logs must be scalars.")
    return value if value.dtype == tf.float32 else tf.cast(value, tf.float32)


def batch_examples(batch: Any) -> tf.Tensor:
    """The leading dimension of the batch's first tensor with one (1.0 when there is none)."""
    for leaf in tf.nest.flatten(batch):
        shape = getattr(leaf, "shape", None)
        if shape is not None and shape.rank:
            return tf.cast(tf.shape(leaf)[0], tf.float32)
    return tf.constant(1.0)


class Layout:
    """Where each log key's parts sit in the packed tensor; filled while the step is traced."""

    def __init__(self):
        self.parts: dict[str, list[int]] = {}

    @tf.autograph.experimental.do_not_convert  # Python control flow only: converting it costs ~0.4 s a trace
    def pack(self, logs: Any, batch: Any, where: str) -> tf.Tensor | None:
        """`logs` (a dict from a step, or None) as a flat ``[2 * parts]`` float32 tensor; None if empty."""
        if logs is None:
            return None
        if not isinstance(logs, dict):
            raise TypeError(
                f"{where} must return a dict of scalar logs (or None), got {type(logs).__name__}."
            )
        index: dict[tuple[int, int], int] = {}  # a part logged under several keys is packed once
        values, weights, examples = [], [], None
        layout: dict[str, list[int]] = {}  # assigned at the end: replicas trace in parallel threads
        for key, log in logs.items():
            if isinstance(log, WeightedSum):
                parts = log.parts
            elif isinstance(log, Weighted):
                parts = (log,)
            else:
                if examples is None:
                    examples = batch_examples(batch)
                parts = (Weighted(log, examples),)
            slots = []
            for part in parts:
                ident = (id(part.value), id(part.weight))
                if ident not in index:
                    index[ident] = len(values)
                    values.append(_scalar(part.value, key, where))
                    weights.append(_scalar(part.weight, f"{key} (its weight)", where))
                slots.append(index[ident])
            layout[key] = slots
        self.parts = layout
        if not values:
            return None
        # A replica without examples may hold NaN for a mean over nothing: it weighs 0.
        products = [v if _is_one(w) else tf.math.multiply_no_nan(v, w) for v, w in zip(values, weights)]
        return tf.stack(products + weights)

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """key -> ``[2, k]`` array of its parts' (weighted sums, weights), from a flat packed array."""
        packed = np.reshape(packed, (2, -1))
        return {key: packed[:, slots] for key, slots in self.parts.items()}


def _is_one(weight: tf.Tensor) -> bool:
    """Whether `weight` is the constant 1 (a batch-level term, a regularizer): v * 1 needs no op."""
    static = tf.get_static_value(weight)
    return static is not None and np.ndim(static) == 0 and float(static) == 1.0


def mean_of(parts: np.ndarray) -> float:
    """The sum over parts of ``sum(v * w) / sum(w)``; a part without weight counts 0 (as a term does)."""
    numerators, weights = np.asarray(parts, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(weights != 0, numerators / np.where(weights != 0, weights, 1.0), 0.0)
    return float(np.sum(means))
