"""Dotted config keys (`"optimizer.learning_rate"`): reading and setting them, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def parts(path: str) -> list[str]:
    """`"optimizer.options.momentum"` -> `["optimizer", "options", "momentum"]`."""
    return path.split(".")


def section_of(path: str) -> str:
    """The top-level section of a key: `"optimizer.learning_rate"` -> `"optimizer"`."""
    return parts(path)[0]


def lookup(config: Any, path: str) -> Any:
    """`config.<path>`; raises what indexing raises (KeyError) when a part is missing."""
    for part in parts(path):
        config = config[part]
    return config


def get(config: Any, path: str, default: Any = None) -> Any:
    """`config.<path>`, or `default` when a part is missing or a value is in its way."""
    for part in parts(path):
        if not isinstance(config, (Mapping, ml_collections.ConfigDict)) or part not in config:
            return default
        config = config[part]
    return config


def assign(config: Any, path: str, value: Any, *, add: bool = False) -> None:
    """Sets `config.<path>` to `value`.

    Args:
      config: a ConfigDict (or nested dicts).
      path: the dotted key.
      value: its new value.
      add: add the key and any missing sections (unlocking them); else every part must exist.

    Raises:
      KeyError: a section of `path` is missing and `add` is False.
      TypeError, ValueError: what the ConfigDict raises for a value of the wrong type.
    """
    *parents, leaf = parts(path)
    for part in parents:
        if add and part not in config:
            with config.unlocked():
                config[part] = ml_collections.ConfigDict()
        config = config[part]
    if add:
        with config.unlocked():
            config[leaf] = value
    else:
        config[leaf] = value
