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


def update(pairs: Pairs, y, y_pred, sample_weight=None) -> None:
    """Updates every metric with its head's labels, predictions and weights (replica context)."""
    for head, metric in pairs:
        owner = f"Metric {metric.name!r}"
        weight = None if sample_weight is None else heads.select(sample_weight, head, "sample_weight", owner)
        metric.update_state(
            heads.select(y, head, "batch labels", owner),
            heads.select(y_pred, head, "model output", owner),
            sample_weight=weight,
        )


def read(pairs: Pairs, strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Current values, summed over replicas. Vector results become `name/i`, dict results `name/key`."""
    out = {}
    with strategy.scope():
        for head, metric in pairs:
            label = name(head, metric)
            result = metric.result()
            items = result.items() if isinstance(result, dict) else [(None, result)]
            for key, value in items:
                value = np.asarray(tf.convert_to_tensor(value), dtype=np.float64)
                full = label if key is None else f"{label}/{key}"
                if value.ndim == 0:
                    out[full] = float(value)
                else:
                    out.update({f"{full}/{i}": float(v) for i, v in enumerate(value.ravel())})
    return out


def reset(pairs: Pairs) -> None:
    for _, metric in pairs:
        metric.reset_state()
