"""Losses Keras 3 lacks: weighted BCE, global Dice / Tversky, RankNet.

Each is a `Term` (or `BatchTerm`) and composes like any other term:

    loss = losses.Dice(from_logits=True).on("seg") + 0.5 * losses.RankNet().on("rank")

All compute in float32 from the inputs the reduction hands them, are
vectorized, stable from logits, and compile under XLA. How each one reduces
over a batch split across replicas (exactly as on one device):

* `WeightedBinaryCrossentropy`: per-element values; the term is their mean
  over all elements of the global batch (weighted mean with sample weights).
* `Dice`, `Tversky`: batch-level; the sums over the global batch (sample
  weights multiply each element's contribution) are all-reduced before
  the ratio.
* `RankNet`: one value per list (a list is an example); lists without a
  valid pair have weight 0, so the mean runs over the lists that have one,
  with the count of such lists all-reduced.
* `Triplet` (in `framework.losses.triplet`) mines over the global batch.
* `NTXent` (in `framework.losses.contrastive`) takes its negatives from the
  global batch.

Labels for the binary losses are 0/1 targets (soft targets are allowed for
float labels) shaped like the predictions, or missing the predictions'
trailing axis of size 1. Integer labels of another shape (class ids) are
rejected at trace time; integer labels are checked to be 0 or 1 at run time
(a check XLA drops under `jit_compile`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from framework.losses.algebra import BatchTerm, Term, Weight
from framework.losses.reduction import broadcast_weight


def _head(term: Term) -> str:
    return f" on head {term.head!r}" if term.head else ""


def _shape(t: tf.Tensor) -> tuple:
    return tuple(t.shape) if t.shape.rank is not None else ("?",)


def _compatible(a: tf.TensorShape, b: tf.TensorShape) -> bool:
    return a.rank == b.rank and all(x is None or y is None or x == y for x, y in zip(a, b))


def _align(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Labels [batch] for predictions [batch, 1] get the trailing axis."""
    rank = y_pred.shape.rank
    if rank is not None and y_true.shape.rank == rank - 1 and y_pred.shape[-1] == 1:
        return tf.expand_dims(y_true, -1)
    return y_true


def check_binary_targets(term: Term, y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
    """Labels must be shaped like the predictions; integer labels must be 0 or 1."""
    aligned = _align(y_true, y_pred).shape
    if y_true.shape.rank is not None and not _compatible(aligned, y_pred.shape):
        hint = (
            " Integer labels of another shape look like class ids: this loss needs 0/1 targets "
            "shaped like the predictions (one-hot encode them)."
            if y_true.dtype.is_integer
            else ""
        )
        raise ValueError(
            f"Loss term {term.name!r}{_head(term)} expects labels of shape {_shape(y_pred)} (binary "
            f"targets shaped like the predictions), got {_shape(y_true)}.{hint}"
        )
    if y_true.dtype.is_integer:
        binary = tf.reduce_all((y_true == 0) | (y_true == 1))
        tf.debugging.Assert(binary, [f"Loss term {term.name!r}{_head(term)}: integer labels must be 0 or 1."])


class WeightedBinaryCrossentropy(Term):
    """Binary cross-entropy with more weight on one class; mean over elements.

    Args:
      pos_weight: `tf.nn.weighted_cross_entropy_with_logits` semantics:
        ``-(pos_weight * y * log(p) + (1 - y) * log(1 - p))``.
      class_weights: ``[w0, w1]``, the common tutorial form: every element's binary
        cross-entropy times ``w1 * y + w0 * (1 - y)`` (w1 on positives, w0 on
        negatives). For 0/1 labels this is ``pos_weight = w1 / w0`` scaled by
        w0; for soft labels the two forms differ.
      from_logits: predictions are logits (stable: a single softplus per
        element); otherwise probabilities, clipped to [eps, 1 - eps] as Keras
        does.
      head: as for `Term`.
      weight: as for `Term`.
      name: as for `Term`.
      mask_nan: as for `Term`.

    Raises:
      ValueError: neither or both of `pos_weight` and `class_weights` are given.
    """

    def __init__(
        self,
        pos_weight: float | None = None,
        *,
        class_weights: tuple[float, float] | list[float] | None = None,
        from_logits: bool = False,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
    ):
        super().__init__(head=head, weight=weight, name=name, mask_nan=mask_nan)
        if (pos_weight is None) == (class_weights is None):
            raise ValueError("WeightedBinaryCrossentropy: give exactly one of pos_weight= or class_weights=.")
        if class_weights is not None:
            if len(class_weights) != 2 or min(class_weights) < 0:
                raise ValueError(
                    f"WeightedBinaryCrossentropy: class_weights must be [w0, w1] >= 0, got {class_weights!r}."
                )
            self.class_weights = (float(class_weights[0]), float(class_weights[1]))
        else:
            if not pos_weight >= 0:
                raise ValueError(f"WeightedBinaryCrossentropy: pos_weight must be >= 0, got {pos_weight!r}.")
            self.class_weights = None
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.from_logits = from_logits

    def validate(self, y_true, y_pred):
        check_binary_targets(self, y_true, y_pred)

    def compute(self, y_true, y_pred):
        y = _align(y_true, y_pred)
        if self.from_logits:
            # -log(sigmoid(x)) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(-x) + x.
            neg_log_p = tf.math.softplus(-y_pred)
            if self.class_weights is None:
                return (1.0 - y) * y_pred + (1.0 + (self.pos_weight - 1.0) * y) * neg_log_p
            w0, w1 = self.class_weights
            return (w0 + (w1 - w0) * y) * (neg_log_p + (1.0 - y) * y_pred)
        eps = keras.config.epsilon()
        p = tf.clip_by_value(y_pred, eps, 1.0 - eps)
        log_p, log_not_p = tf.math.log(p), tf.math.log(1.0 - p)
        if self.class_weights is None:
            return -(self.pos_weight * y * log_p + (1.0 - y) * log_not_p)
        w0, w1 = self.class_weights
        return -(w0 + (w1 - w0) * y) * (y * log_p + (1.0 - y) * log_not_p)


class _Overlap(BatchTerm):
    """Shared by Dice and Tversky: weighted sums over the global batch."""

    def __init__(self, *, smooth: float, from_logits: bool, head, weight, name, mask_nan):
        super().__init__(head=head, weight=weight, name=name, mask_nan=mask_nan)
        if not smooth >= 0:
            raise ValueError(f"{type(self).__name__}: smooth must be >= 0, got {smooth!r}.")
        self.smooth = float(smooth)
        self.from_logits = from_logits

    def validate(self, y_true, y_pred):
        check_binary_targets(self, y_true, y_pred)

    def _inputs(self, y_true, y_pred, sample_weight):
        """(y, p, y * w, p * w) with the sample weight broadcast to every element."""
        y = _align(y_true, y_pred)
        p = tf.math.sigmoid(y_pred) if self.from_logits else y_pred
        if sample_weight is None:
            return y, p, y, p
        w = broadcast_weight(sample_weight, p)
        return y, p, y * w, p * w


class Dice(_Overlap):
    """Soft Dice over the whole global batch.

    ``1 - (2 * sum(w*y*p) + smooth) / (sum(w*y) + sum(w*p) + smooth)``, the
    sums running over every element of the global batch (all replicas).
    `sample_weight` (per example or per element) multiplies each element's
    contributions; a weight of 0 masks it out. With `smooth=0` a batch
    without positives or predicted mass gives 1. Keras' `Dice()` (axis=None)
    is the same on one device with `smooth` 0 but a 1e-7 in the denominator;
    under a strategy Keras' sees one replica's shard.

    Args:
      smooth: added to numerator and denominator.
      from_logits: apply a sigmoid to the predictions first.
      head: as for `Term`.
      weight: as for `Term`.
      name: as for `Term`.
      mask_nan: as for `Term`.
    """

    def __init__(
        self,
        *,
        smooth: float = 1.0,
        from_logits: bool = False,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
    ):
        super().__init__(
            smooth=smooth, from_logits=from_logits, head=head, weight=weight, name=name, mask_nan=mask_nan
        )

    def statistics(self, y_true, y_pred, sample_weight):
        y, p, yw, pw = self._inputs(y_true, y_pred, sample_weight)
        return {
            "intersection": tf.reduce_sum(yw * p),
            "true": tf.reduce_sum(yw),
            "pred": tf.reduce_sum(pw),
        }

    def from_statistics(self, stats):
        numerator = 2.0 * stats["intersection"] + self.smooth
        return 1.0 - tf.math.divide_no_nan(numerator, stats["true"] + stats["pred"] + self.smooth)


class Tversky(_Overlap):
    """Tversky loss over the whole global batch.

    ``1 - (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)`` with
    ``TP = sum(w*y*p)``, ``FP = sum(w*(1-y)*p)``, ``FN = sum(w*y*(1-p))``
    over the global batch (Salehi et al., 2017: alpha weighs false
    positives). alpha = beta = 0.5 with smooth 0 is Dice. Note Keras'
    `Tversky(alpha, beta)` applies alpha to false *negatives*: ours equals
    Keras' with alpha and beta swapped (and smooth ~ 0, on one device).

    Args:
      alpha: the weight of false positives.
      beta: the weight of false negatives.
      smooth: as for `Dice` and `Term`.
      from_logits: as for `Dice` and `Term`.
      head: as for `Dice` and `Term`.
      weight: as for `Dice` and `Term`.
      name: as for `Dice` and `Term`.
      mask_nan: as for `Dice` and `Term`.

    Raises:
      ValueError: `alpha` or `beta` is negative.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        *,
        smooth: float = 1.0,
        from_logits: bool = False,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
    ):
        super().__init__(
            smooth=smooth, from_logits=from_logits, head=head, weight=weight, name=name, mask_nan=mask_nan
        )
        if not (alpha >= 0 and beta >= 0):
            raise ValueError(f"Tversky: alpha and beta must be >= 0, got {alpha!r}, {beta!r}.")
        self.alpha, self.beta = float(alpha), float(beta)

    def statistics(self, y_true, y_pred, sample_weight):
        y, p, yw, pw = self._inputs(y_true, y_pred, sample_weight)
        return {
            "tp": tf.reduce_sum(yw * p),
            "fp": tf.reduce_sum(pw * (1.0 - y)),
            "fn": tf.reduce_sum(yw * (1.0 - p)),
        }

    def from_statistics(self, stats):
        tp = stats["tp"]
        denominator = tp + self.alpha * stats["fp"] + self.beta * stats["fn"] + self.smooth
        return 1.0 - tf.math.divide_no_nan(tp + self.smooth, denominator)


class RankNet(Term):
    """Pairwise logistic ranking loss over lists (Burges et al., 2005).

    Labels and scores are `[batch, list_size]`. For every pair with
    ``rel_i > rel_j`` the pair loss is ``log(1 + exp(-(s_i - s_j)))``
    (a softplus); a list's value is the mean over its pairs, and the term is
    the mean over the lists that have at least one pair, over the global
    batch. Lists without a pair (all relevances equal, or padding) get
    weight 0: they neither contribute nor dilute the mean. Items with a
    negative or NaN relevance are padding (the TF-Ranking convention) and
    take part in no pair. `sample_weight` is one weight per list.

    Args:
      head: as for `Term`.
      weight: as for `Term`.
      name: as for `Term`.
      reduction: as for `Term`.

    Raises:
      ValueError: when traced, scores are not `[batch, list_size]` shaped like
        the labels, or sample weights are not one per list.
    """

    def validate(self, y_true, y_pred):
        if y_pred.shape.rank != 2 or not _compatible(y_true.shape, y_pred.shape):
            raise ValueError(
                f"Loss term {self.name!r}{_head(self)} expects relevance labels and scores of the same "
                f"shape [batch, list_size]; got labels {_shape(y_true)} and scores {_shape(y_pred)}."
            )

    def values_and_weights(self, y_true, y_pred, sample_weight):
        pairs = (y_true[:, :, None] > y_true[:, None, :]) & (y_true[:, None, :] >= 0.0)
        pair_loss = tf.where(pairs, tf.math.softplus(y_pred[:, None, :] - y_pred[:, :, None]), 0.0)
        lists = tf.shape(y_pred)[0]  # [lists, i * j]: XLA on CPU reduces one axis faster than two
        count = tf.reduce_sum(tf.reshape(tf.cast(pairs, tf.float32), [lists, -1]), axis=1)
        per_list = tf.math.divide_no_nan(tf.reduce_sum(tf.reshape(pair_loss, [lists, -1]), axis=1), count)
        weights = tf.cast(count > 0, tf.float32)
        if sample_weight is not None:
            if sample_weight.shape.rank is not None and sample_weight.shape.rank > 1:
                if sample_weight.shape[-1] != 1 or sample_weight.shape.rank > 2:
                    raise ValueError(
                        f"Loss term {self.name!r}{_head(self)} takes one sample weight per list "
                        f"(shape [batch]), got shape {_shape(sample_weight)}."
                    )
                sample_weight = tf.squeeze(sample_weight, -1)
            weights = weights * sample_weight
        return per_list, weights
