"""Checks of the training input, before anything is traced or written: bad batches fail here, naming why.

* `element_spec`: the default step needs `(x, y)` or `(x, y, sample_weight)`
  with numeric tensors.
* `first_batch`: the training dataset's first batch, eagerly: integer class
  labels of a sparse cross-entropy term must lie in `[0, classes)`; on CPU an
  out-of-range label silently gives a garbage loss instead of an error.

A custom `train_step` decides itself what the loss reads (it may build its
own heads), so these checks stay out of it; `compute_loss` still names a
mismatch when traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from framework import heads


def _numeric(spec: tf.TensorSpec) -> bool:
    return spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool


def element_spec(spec, *, default_step: bool) -> None:
    """Checks the structure and dtypes of the training batches, as the default train_step reads them.

    Args:
      spec: the training dataset's element spec.
      default_step: whether `train_step` is the base class's (a custom step is not checked).

    Raises:
      TypeError: the batches are not `(x, y[, sample_weight])`, or a part is not numeric.
    """
    if not default_step:
        return
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
        raise TypeError(
            "build_train_dataset() yields batches shaped like "
            f"{tf.nest.map_structure(lambda s: f'{s.dtype.name}{s.shape}', spec)}; the default "
            "train_step expects (x, y) or (x, y, sample_weight). Map the dataset to that, or "
            "override train_step."
        )
    for name, part in zip(("x", "y", "sample_weight"), spec):
        for leaf in tf.nest.flatten(part):
            if isinstance(leaf, tf.TensorSpec) and not _numeric(leaf):
                raise TypeError(
                    f"build_train_dataset() yields {name} of dtype {leaf.dtype.name}; the model and "
                    "losses need numbers (decode strings in the input pipeline)."
                )


def _sparse_ce(term) -> bool:
    fn = getattr(term, "fn", None)
    return isinstance(fn, keras.losses.SparseCategoricalCrossentropy) or "sparse_categorical" in getattr(
        fn, "__name__", ""
    )


def first_batch(loss, model_outputs: Callable[[Any], Any], dataset: tf.data.Dataset) -> None:
    """Runs the model on one batch and checks sparse labels against the number of classes.

    Args:
      loss: the loss the default train_step applies (None: nothing to check).
      model_outputs: `x -> the model's outputs`, leaving the model's state as it was.
      dataset: the host's training batches.

    Raises:
      ValueError: a sparse cross-entropy term's labels lie outside the model's classes.
    """
    if loss is None:
        return
    terms = [t for t in loss.flat_terms() if t.kind == "per_example" and _sparse_ce(t)]
    if not terms:
        return
    batch = next(iter(dataset.take(1)))
    x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
    y_pred = model_outputs(x)
    for term in terms:
        owner = f"Loss term {term.name!r}"
        labels = np.asarray(heads.labels(y, term.head, owner))
        classes = heads.output(y_pred, term.head, owner).shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(
                f"{owner}: the first training batch has class labels in [{labels.min():g}, "
                f"{labels.max():g}], but the model's output has {classes} classes (labels must lie in "
                f"[0, {classes}))."
            )
