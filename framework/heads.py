"""Model heads: matching labels, predictions, weights, losses and metrics by name.

A single-output model has no head names; a model whose outputs are a dict
has one head per key, and batches carry labels (and sample weights) as dicts
keyed the same way. These checks run at trace time, so a mismatch fails
before the first step with the head named.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def output(value: Any, head: str | None, owner: str) -> Any:
    """The model output `owner` reads: `value[head]`, or the single output.

    Raises:
      KeyError: `head` is not one of the outputs, or is given for a model with
        a single unnamed output.
      ValueError: no head is given and the model has several.
    """
    if head is not None and value is not None and not isinstance(value, dict):
        raise KeyError(
            f"{owner} reads head {head!r}, but the model has a single unnamed output; drop .on(...) "
            "or give the model named outputs."
        )
    return _by_head(value, head, "model output", owner)


def labels(value: Any, head: str | None, owner: str) -> Any:
    """The batch labels `owner` reads: `value[head]`, or the labels themselves.

    Raises:
      KeyError: the labels are keyed by head and `head` is not among them.
      ValueError: no head is given and the labels have several.
    """
    return _by_head(value, head, "batch labels", owner)


def sample_weight(value: Any, head: str | None, owner: str) -> Any:
    """The sample weights `owner` reads; None (every example weighs 1) for a head without weights.

    Raises:
      ValueError: no head is given and the weights have several.
    """
    if isinstance(value, dict) and head is not None and head not in value:
        return None  # as in Keras: a head without weights weighs every example 1
    return _by_head(value, head, "sample_weight", owner)


def _by_head(value: Any, head: str | None, what: str, owner: str) -> Any:
    """`value[head]` for dict values; `value` itself otherwise."""
    if not isinstance(value, dict):
        return value
    if head is None:
        if len(value) == 1:
            return next(iter(value.values()))
        raise ValueError(
            f"{owner} has no head, but the {what} has heads {sorted(value)}; attach it with .on(<head>)."
        )
    if head not in value:
        raise KeyError(f"{owner} reads head {head!r}, but the {what} has heads {sorted(value)}.")
    return value[head]


def nan_mask(y_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels with NaN replaced by 0, per-example weight 0 where any label element is NaN)."""
    finite = tf.math.is_finite(y_true)
    valid = tf.reduce_all(finite, axis=list(range(1, y_true.shape.rank))) if y_true.shape.rank > 1 else finite
    return tf.where(finite, y_true, tf.zeros_like(y_true)), tf.cast(valid, tf.float32)


def model_heads(model: keras.Model) -> list[str] | None:
    """Sorted head names of a functional model with dict outputs, else None."""
    try:
        output = model.output
    except (AttributeError, ValueError):
        return None
    return sorted(output) if isinstance(output, dict) else None


def check_loss_heads(model: keras.Model, loss) -> None:
    heads = model_heads(model)
    if heads is None:
        return
    for term in loss.flat_terms():
        if term.kind != "regularizer" and term.head is not None and term.head not in heads:
            raise KeyError(
                f"Loss term {term.name!r} reads head {term.head!r}, but the model's heads are {heads}."
            )


def loss_heads(loss) -> set:
    """The heads a loss's terms read (regularizers read none)."""
    return {t.head for t in loss.flat_terms() if t.kind != "regularizer" and t.head is not None}


def outputs_have(y_pred: Any, wanted: set) -> bool:
    """Whether predictions `y_pred` have every head in `wanted` (a single output has none)."""
    return wanted <= set(y_pred) if isinstance(y_pred, dict) else not wanted


def check_batch(y: Any, y_pred: Any, used_heads: set, sample_weight: Any = None) -> None:
    """Labels (and weights) must be keyed like the model's outputs; missing labels for used heads fail."""
    if isinstance(sample_weight, dict) and isinstance(y_pred, dict):
        unknown = sorted(set(sample_weight) - set(y_pred))
        if unknown:
            raise ValueError(
                f"The batch has sample weights for head {unknown[0]!r}, which the model does not have; "
                f"the model's heads are {sorted(y_pred)}."
            )
    if isinstance(y_pred, dict):
        if y is not None and not isinstance(y, dict):
            raise ValueError(
                f"The model has heads {sorted(y_pred)} but the batch labels are a single "
                f"{type(y).__name__}; give labels as a dict keyed by head."
            )
        if isinstance(y, dict):
            unknown = sorted(set(y) - set(y_pred))
            if unknown:
                raise ValueError(
                    f"The batch has labels for head {unknown[0]!r}, which the model does not have; "
                    f"the model's heads are {sorted(y_pred)}."
                )
            absent = sorted(h for h in set(y_pred) - set(y) if h in used_heads)
            if absent:
                raise ValueError(
                    f"The batch has no labels for head {absent[0]!r}; the model's heads are "
                    f"{sorted(y_pred)} and the batch's label keys are {sorted(y)}."
                )
    elif isinstance(y, dict):
        raise ValueError(f"The batch labels are keyed by head {sorted(y)} but the model has a single output.")
