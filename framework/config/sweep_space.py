"""What a sweep spans: the points and ranges a config file's `get_sweep(arg)` returns.

A grid is a list of override dicts, built with `product` and `zipped`; an
Optuna search space is one dict whose values may be ranges (`uniform`,
`log_uniform`, `integers`, `choice`). `framework.config` re-exports every
name here, so a config file imports them with `defaults` and `parse_arg`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from framework.config.errors import ConfigError


def _axes(axes: Mapping[str, Iterable], helper: str) -> dict[str, list]:
    if not isinstance(axes, Mapping):
        raise ConfigError(f"{helper}: expected a dict of config key -> values, got {type(axes).__name__}.")
    out = {}
    for key, values in axes.items():
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise ConfigError(f"{helper}: {key!r} needs a list of values, got {values!r}.")
        out[key] = list(values)
        if not out[key]:
            raise ConfigError(f"{helper}: {key!r} has no values.")
    return out


def product(*parts: Mapping[str, Iterable] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the parts' points, as a list of override dicts.

    Args:
      *parts: each a dict of config key -> values (itself a product of its keys)
        or a list of override dicts (e.g. from `zipped`).

    Returns:
      One dict per combination, later parts varying fastest::

        product({"optimizer.learning_rate": [1e-3, 3e-3]}, {"seed": range(2)})
        # [{lr: 1e-3, seed: 0}, {lr: 1e-3, seed: 1}, {lr: 3e-3, seed: 0}, {lr: 3e-3, seed: 1}]

    Raises:
      ConfigError: a part is neither, a key has no values, or two parts set the same key.
    """
    lists = []
    for part in parts:
        if isinstance(part, Mapping):
            axes = _axes(part, "product")
            lists.append([dict(zip(axes, values)) for values in itertools.product(*axes.values())])
        elif isinstance(part, Sequence) and all(isinstance(p, Mapping) for p in part):
            lists.append([dict(p) for p in part])
        else:
            raise ConfigError(f"product: expected dicts of key -> values or lists of points, got {part!r}.")
    points = []
    for combination in itertools.product(*lists):
        point: dict[str, Any] = {}
        for piece in combination:
            for key in piece.keys() & point.keys():
                raise ConfigError(f"product: {key!r} is set by two parts.")
            point.update(piece)
        points.append(point)
    return points


def zipped(axes: Mapping[str, Iterable]) -> list[dict[str, Any]]:
    """The i-th values of every key together: `zipped({"a": [1, 2], "b": [3, 4]})` is 2 points.

    Raises:
      ConfigError: the keys have different numbers of values.
    """
    lists = _axes(axes, "zipped")
    lengths = {key: len(values) for key, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zipped: every key needs as many values; got {lengths}.")
    return [dict(zip(lists, values)) for values in zip(*lists.values())]


@dataclasses.dataclass(frozen=True)
class Range:
    """A search dimension: `kind` is "float", "int" or "choice"."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def __post_init__(self):
        if self.kind == "choice":
            if not self.choices:
                raise ConfigError("choice: needs at least one value.")
        elif not (self.low is not None and self.high is not None and self.low < self.high):
            raise ConfigError(f"{self.kind} range: needs low < high, got ({self.low}, {self.high}).")
        elif self.log and self.low <= 0:
            raise ConfigError(f"log range: needs low > 0, got {self.low}.")


def uniform(low: float, high: float, *, log: bool = False) -> Range:
    """Floats in [low, high] (log-spaced if `log`)."""
    return Range("float", float(low), float(high), log)


def log_uniform(low: float, high: float) -> Range:
    """Floats in [low, high], log-spaced: learning rates, weight decays."""
    return uniform(low, high, log=True)


def integers(low: int, high: int, *, log: bool = False) -> Range:
    """Integers in [low, high], both included."""
    return Range("int", int(low), int(high), log)


def choice(values: Iterable) -> Range:
    """One of `values`."""
    return Range("choice", choices=tuple(values))
