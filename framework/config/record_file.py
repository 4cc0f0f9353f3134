"""Reading a run's `workdir/config.json` (written by `framework.outputs.recorded_config`) back as plain data.

Kept apart from `framework.outputs.recorded_config`, which builds on `framework.config`, so
that `framework.config.load` can read a run's record without an import cycle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

FILENAME = "config.json"


def load(workdir: str) -> dict | None:
    """The recorded config as a config dict (what the framework wrote, not a config); None if absent."""
    import tensorflow as tf  # here: framework.config (and so the sweeps) must import without TensorFlow

    path = os.path.join(workdir, FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
    recorded.pop("added_optimizers", None)
    if "built_by" in recorded.get("optimizer", {}):
        recorded.pop("optimizer")  # the trainer builds it; config.optimizer was not used
    return recorded


def retyped(value: Any, like: Any) -> Any:
    """JSON has no tuples: give recorded lists back the type the current config uses."""
    if isinstance(value, Mapping):
        return {
            k: retyped(v, like[k] if isinstance(like, Mapping) and k in like else None)
            for k, v in value.items()
        }
    if isinstance(value, list) and (isinstance(like, tuple) or like is None):
        return tuple(retyped(v, None) for v in value)
    return value
