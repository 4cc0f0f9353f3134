"""Checks that run before any work: bad input fails here, naming the culprit.

* `workdir`: not a file, writable (the nearest existing ancestor for a new one).
* `batch_size`: divisible by the number of replicas.
* `first_batch`: the training dataset's first batch, eagerly, before anything
  is traced or written: the default step needs `(x, y)` or `(x, y,
  sample_weight)` with numeric tensors, and integer class labels of a sparse
  cross-entropy term must lie in `[0, classes)`: on CPU an out-of-range label
  silently gives a garbage loss instead of an error. A custom `train_step`
  decides itself what the loss reads (it may build its own heads), so these
  checks stay out of it; `compute_loss` still names a mismatch when traced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from framework import heads
from framework.config import ConfigError


def workdir(path: str | None) -> None:
    if not path or "://" in path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"--workdir {path!r} is a file; give a directory.")
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip(os.sep)) or "."
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--workdir {path!r} is not writable (checked {existing!r}).")


def batch_size(config, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the {replicas} replicas of "
            f"{type(strategy).__name__}; use a multiple of {replicas}."
        )


def _numeric(spec: tf.TensorSpec) -> bool:
    return spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool


def element_spec(spec, *, default_step: bool) -> None:
    """Structure and dtypes of the training batches, as the default train_step reads them."""
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
