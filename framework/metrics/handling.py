"""Keras metric objects: collected from `build_metrics()`, updated per replica, read on the host.

`build_metrics()` returns a list (single-output model) or a dict head -> list.
Metrics are updated inside the compiled replica step; their variables are
summed over replicas when read, so `read()` gives the global value. They
are reset at the start of every epoch and every evaluation.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from framework import heads

Pairs = list[tuple[str | None, keras.metrics.Metric]]


def collect(model: keras.Model, built: Any) -> Pairs:
    """`build_metrics()` output as (head, metric) pairs, checked."""
    if isinstance(built, dict):
        pairs = [
            (head, m) for head, ms in built.items() for m in (ms if isinstance(ms, (list, tuple)) else [ms])
        ]
        model_heads = heads.model_heads(model)
        for head, _ in pairs:
            if model_heads is not None and head not in model_heads:
                raise KeyError(
                    f"build_metrics() names head {head!r}, but the model's heads are {model_heads}."
                )
    elif isinstance(built, (list, tuple)):
        pairs = [(None, m) for m in built]
    else:
        raise TypeError(
            f"build_metrics() must return a list or a dict head -> list, got {type(built).__name__}."
        )
    for _, metric in pairs:
        if not isinstance(metric, keras.metrics.Metric):
            raise TypeError(
                f"build_metrics() must return keras.metrics.Metric objects, got {type(metric).__name__}: "
                f"{metric!r:.100}"
            )
    return pairs


def name(head: str | None, metric: keras.metrics.Metric) -> str:
    return f"{head}/{metric.name}" if head else metric.name


def update(pairs: Pairs, y, y_pred, sample_weight=None, *, nan_masked: frozenset = frozenset()) -> None:
    """Updates every metric with its head's labels, predictions and weights (replica context).

    nan_masked: heads whose NaN labels mean "missing" (a loss term with
    `mask_nan=True`): those examples are left out of the head's metrics too.
    """
    for head, metric in pairs:
        owner = f"Metric {metric.name!r}"
        weight = None if sample_weight is None else heads.sample_weight(sample_weight, head, owner)
        labels = heads.labels(y, head, owner)
        if head in nan_masked and labels.dtype.is_floating:
            labels, valid = heads.nan_mask(labels)
            weight = valid if weight is None else tf.cast(weight, tf.float32) * valid
        metric.update_state(labels, heads.output(y_pred, head, owner), sample_weight=weight)


def build(pairs: Pairs, y, y_pred) -> None:
    """Creates the variables of metrics that make them on first use (F1Score, AUC(multi_label)).

    Variables created while tracing a replica step would not be distributed;
    one eager update on `y` / `y_pred` (example zeros) and a reset create them here.
    """
    for head, metric in pairs:
        if metric.variables:
            continue
        owner = f"Metric {metric.name!r}"
        try:
            metric.update_state(
                heads.labels(y, head, owner),
                heads.output(y_pred, head, owner),
            )
        except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
            raise ValueError(
                f"{owner} creates its variables on first use, and an update with labels and predictions "
                f"shaped like the model's failed ({type(e).__name__}: {e}); build it in build_metrics() "
                "with one update_state on example values and a reset_state()."
            ) from None
        metric.reset_state()


def read(pairs: Pairs, strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Current values, summed over replicas. Vector results become `name/i`, dict results `name/key`."""
    with strategy.scope():
        return {key: float(np.asarray(value, dtype=np.float64)) for key, value in results(pairs).items()}


def results(pairs: Pairs) -> dict[str, tf.Tensor]:
    """`read`'s keys -> scalar tensors: eagerly, or in a graph (a compiled train call reads them).

    Raises:
      ValueError: in a graph, a vector result of unknown length.
    """
    out = {}
    for head, metric in pairs:
        label = name(head, metric)
        result = metric.result()
        items = result.items() if isinstance(result, dict) else [(None, result)]
        for key, value in items:
            value = tf.convert_to_tensor(value)
            full = label if key is None else f"{label}/{key}"
            if value.shape.rank == 0:
                out[full] = value
                continue
            if not value.shape.is_fully_defined():
                raise ValueError(f"metric {full!r} has a result of unknown shape {value.shape}")
            out.update({f"{full}/{i}": v for i, v in enumerate(tf.unstack(tf.reshape(value, [-1])))})
    return out


def reset(pairs: Pairs) -> None:
    for _, metric in pairs:
        metric.reset_state()
