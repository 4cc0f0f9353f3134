"""A run's state as numpy: every variable training reads or writes.

`collect(trainer)` finds, in a fixed order, the variables of the model, the
optimizer(s) (slots, iteration count, loss scale), the metrics, the trainer's
counters, and anything else the trainer holds as an attribute: extra models
and optimizers (a GAN's second one), `keras.random.SeedGenerator`s,
`tf.random.Generator`s, loose variables. Dropout's seed state lives in the
model's variables, so it comes along.

Variables are keyed by position inside their group, not by name: Keras names
layers from a per-process counter (`dense_7`), so the same model built in
another process has other names. Names and shapes are kept beside the values
to explain a mismatch.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

_SKIP_ATTRS = {
    "eval_metrics",
    "model",
    "optimizer",
    "metrics",
    "strategy",
    "config",
    "loss",
    "_step",
    "_nonfinite_step",
    "_nonfinite_count",
    "_updater",
}
_MAX_DEPTH, _MAX_ITEMS = 3, 64  # don't wander through a trainer's data arrays


def _variables_of(value: Any) -> list | None:
    if isinstance(value, (keras.Model, keras.optimizers.Optimizer)):
        return list(value.variables)
    if isinstance(value, keras.metrics.Metric):
        return list(value.variables)
    if isinstance(value, keras.random.SeedGenerator):
        return [value.state]
    if isinstance(value, tf.random.Generator):
        return [value.state]
    if isinstance(value, (tf.Variable, keras.Variable)):
        return [value]
    return None


def _walk(value: Any, prefix: str, out: dict[str, list], depth: int = 0) -> None:
    found = _variables_of(value)
    if found is not None:
        out[prefix] = found
    elif depth >= _MAX_DEPTH or not isinstance(value, (list, tuple, dict)) or len(value) > _MAX_ITEMS:
        return
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _walk(value[key], f"{prefix}.{key}", out, depth + 1)
    else:
        for i, item in enumerate(value):
            _walk(item, f"{prefix}.{i}", out, depth + 1)


def collect(trainer) -> dict[str, list]:
    """Group name -> variables, in a deterministic order."""
    groups: dict[str, list] = {
        "model": list(trainer.model.variables),
        "optimizer": list(trainer.optimizer.variables),
        "metrics": list(
            {id(v): v for _, m in trainer.metrics + trainer.eval_metrics for v in m.variables}.values()
        ),
        "trainer": [trainer._step],
    }
    for name, optimizer in trainer._updater.named_optimizers()[1:]:
        groups[f"optimizer.{name}"] = list(optimizer.variables)
    if trainer._updater.variables:  # gradient accumulation: resume mid-window
        groups["accumulation"] = list(trainer._updater.variables)
    extra: dict[str, list] = {}
    for name in sorted(vars(trainer)):
        if name in _SKIP_ATTRS:
            continue
        _walk(getattr(trainer, name), f"attr.{name.lstrip('_')}", extra)
    seen = {id(v) for vs in groups.values() for v in vs}
    for name, variables in extra.items():
        fresh = [v for v in variables if id(v) not in seen]
        seen.update(id(v) for v in fresh)
        if fresh:
            groups[name] = fresh
    return groups


def _name(variable) -> str:
    return getattr(variable, "path", None) or variable.name


def snapshot(groups: dict[str, list]) -> tuple[dict, dict]:
    """(arrays: group -> {index: ndarray}, layout: group -> [[name, shape, dtype]])."""
    arrays, layout = {}, {}
    for group, variables in groups.items():
        arrays[group] = {f"{i:05d}": np.array(v) for i, v in enumerate(variables)}
        layout[group] = [[_name(v), list(np.shape(v)), str(np.asarray(v).dtype)] for v in variables]
    return arrays, layout


def mismatches(groups: dict[str, list], layout: dict) -> list[str]:
    """Differences between saved `layout` and the variables in `groups`."""
    problems = []
    for group in sorted(set(groups) | set(layout)):
        current = groups.get(group, [])
        saved = layout.get(group, [])
        if len(current) != len(saved):
            problems.append(f"{group}: checkpoint has {len(saved)} variables, this run has {len(current)}")
        for i, (variable, (name, shape, _)) in enumerate(zip(current, saved)):
            if list(np.shape(variable)) != list(shape):
                problems.append(
                    f"{group}[{i}] {_name(variable)}: checkpoint {name} has shape {tuple(shape)}, "
                    f"this run's has {tuple(np.shape(variable))}"
                )
    return problems


def assign(groups: dict[str, list], arrays: dict) -> None:
    for group, variables in groups.items():
        values = arrays[group]
        for i, variable in enumerate(variables):
            variable.assign(np.asarray(values[f"{i:05d}"]).astype(np.asarray(variable).dtype))
