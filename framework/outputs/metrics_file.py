"""`metrics.jsonl`: its name, reading its records back, and its keys (`val/` for evaluation).

Needs no TensorFlow: the sweeps part reads runs' records with it. A remote workdir (`gs://...`) is
read with `tf.io.gfile`, as `run_log.RunLog` writes it; a local one with `open`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

FILENAME = "metrics.jsonl"
VAL = "val/"  # evaluation keys in logs and records: `val/loss`
KERAS_VAL = "val_"  # the same keys in Keras callbacks' logs: `val_loss`


def path_of(workdir: str) -> str:
    return os.path.join(workdir, FILENAME)


def _is_remote(path: str) -> bool:
    return "://" in path


def exists(workdir: str) -> bool:
    path = path_of(workdir)
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def read_records(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`; [] if the run never logged."""
    if not exists(workdir):
        return []
    path = path_of(workdir)
    if _is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as f:
            lines = f.read().splitlines()
    else:
        with open(path) as f:
            lines = f.read().splitlines()
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash mid-write ends the readable part
    return records


def is_val(key: str) -> bool:
    """Whether `key` is an evaluation value (`val/loss`)."""
    return key.startswith(VAL)


def as_val(results: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's results as logged: `loss` -> `val/loss`."""
    return {VAL + k: v for k, v in results.items()}


def without_val(key: str) -> str:
    """`val/loss` -> `loss` (a key that is no evaluation key is returned as it is)."""
    return key[len(VAL) :] if is_val(key) else key


def keras_names(logs: Mapping[str, Any]) -> dict[str, Any]:
    """Logs under Keras' names, as Keras callbacks expect them: `val/loss` -> `val_loss`."""
    return {(KERAS_VAL + without_val(k) if is_val(k) else k): v for k, v in logs.items()}
