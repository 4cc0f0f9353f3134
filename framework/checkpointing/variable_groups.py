"""A run's state as numpy: every variable training reads or writes.

`collect(trainer)` finds, in a fixed order, the variables of the model, the
optimizer(s) (slots, iteration count, loss scale), the metrics, the trainer's
counters, and anything else the trainer holds as an attribute: extra models
and optimizers (a GAN's second one), `keras.random.SeedGenerator`s,
`tf.random.Generator`s, loose variables. Dropout's seed state lives in the
model's variables, so it comes along.

Models held as attributes are state unless they cannot change: a frozen
model (no trainable weights) or one given to the constructor (a teacher) is
left out, unless an optimizer trains its variables. `Trainer.checkpoint_include`
and `checkpoint_exclude` name attributes to keep or leave out regardless.

Variables are keyed by position inside their group, not by name: Keras names
layers from a per-process counter (`dense_7`), so the same model built in
another process has other names. Names and shapes are kept beside the values
to explain a mismatch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

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


def _walk(
    value: Any,
    prefix: str,
    out: dict[str, list],
    skipped: dict[str, tuple[str, list]],
    why_not: Callable,
    depth: int = 0,
) -> None:
    """Collects variable holders under `value` into `out`; models `why_not(model)` names go to `skipped`."""
    found = _variables_of(value)
    if found is not None:
        reason = why_not(value) if isinstance(value, keras.Model) else None
        if reason:
            skipped[prefix] = (reason, found)
        else:
            out[prefix] = found
    elif depth >= _MAX_DEPTH or not isinstance(value, (list, tuple, dict)) or len(value) > _MAX_ITEMS:
        return
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _walk(value[key], f"{prefix}.{key}", out, skipped, why_not, depth + 1)
    else:
        for i, item in enumerate(value):
            _walk(item, f"{prefix}.{i}", out, skipped, why_not, depth + 1)


def _named_attributes(trainer, skip: frozenset[str]) -> tuple[set[str], set[str]]:
    cls = type(trainer)
    include, exclude = set(trainer.checkpoint_include), set(trainer.checkpoint_exclude)
    for which, names in (("checkpoint_include", include), ("checkpoint_exclude", exclude)):
        if isinstance(getattr(trainer, which), str):
            raise TypeError(f"{cls.__name__}.{which} must be a tuple of attribute names, not a string.")
        unknown = sorted(n for n in names if not hasattr(trainer, n))
        if unknown:
            raise ValueError(
                f"{cls.__name__}.{which} names {', '.join(map(repr, unknown))}, which the trainer does not "
                f"have. Its attributes: {', '.join(sorted(n for n in vars(trainer) if n not in skip))}."
            )
    both = include & exclude
    if both:
        raise ValueError(f"{cls.__name__}: {sorted(both)} in both checkpoint_include and checkpoint_exclude.")
    return include, exclude


def _reason_left_out(model: keras.Model, given: bool, trained: set[int]) -> str | None:
    if not model.variables or any(id(v) in trained for v in model.variables):
        return None
    if not model.trainable_variables:
        return "frozen: no trainable weights"
    if given:
        return "given to the constructor and trained by no optimizer"
    return None


_reported: weakref.WeakSet = weakref.WeakSet()


def collect(
    trainer,
    *,
    counters: list[tf.Variable],
    updater,
    skip: frozenset[str],
    given: frozenset[str],
) -> dict[str, list]:
    """Group name -> variables, in a deterministic order.

    Args:
      trainer: its model, optimizer, metrics and the variables held in its
        other attributes (see the module docstring).
      counters: the trainer's own variables (its step), the "trainer" group.
      updater: the trainer's `framework.optim.updates.Updater` (added optimizers,
        accumulation variables, the variables the optimizers train).
      skip: attributes the trainer holds for the framework, not walked.
      given: attributes set before the trainer's build hooks ran.

    Returns:
      Variables by group: model, optimizer, metrics, trainer, then added
      optimizers, accumulation and `attr.<name>` for other attributes.
    """
    groups: dict[str, list] = {
        "model": list(trainer.model.variables),
        "optimizer": list(trainer.optimizer.variables),
        "metrics": list(
            {id(v): v for _, m in trainer.metrics + trainer.eval_metrics for v in m.variables}.values()
        ),
        "trainer": list(counters),
    }
    for name, optimizer in updater.named_optimizers()[1:]:
        groups[f"optimizer.{name}"] = list(optimizer.variables)
    if updater.variables:  # gradient accumulation: resume mid-window
        groups["accumulation"] = list(updater.variables)
    include, exclude = _named_attributes(trainer, skip)
    trained = {id(v) for v in updater.trained_variables()}
    extra: dict[str, list] = {}
    left_out = {
        f"attr.{name.lstrip('_')}": ("in checkpoint_exclude", _variables_of(getattr(trainer, name)) or [])
        for name in sorted(exclude)
    }
    for name in sorted(vars(trainer)):
        if name in skip or name in exclude:
            continue
        keep = name in include
        _walk(
            getattr(trainer, name),
            f"attr.{name.lstrip('_')}",
            extra,
            left_out,
            lambda model, g=name in given, k=keep: None if k else _reason_left_out(model, g, trained),
        )
    seen = {id(v) for vs in groups.values() for v in vs}
    saved = seen | {id(v) for vs in extra.values() for v in vs}
    # A left-out model whose weights all belong to a saved one (an encoder inside the model) is saved with it.
    inside = {k for k, (_, vs) in left_out.items() if vs and all(id(v) in saved for v in vs)}
    left_out = {
        k: f"{reason}; its weights are still saved, with the model holding them" if k in inside else reason
        for k, (reason, _) in left_out.items()
        if k not in inside or reason == "in checkpoint_exclude"
    }
    if left_out and trainer not in _reported:
        _reported.add(trainer)
        logging.info(
            "Not checkpointed: %s.", "; ".join(f"{k[len('attr.') :]} ({v})" for k, v in left_out.items())
        )
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
