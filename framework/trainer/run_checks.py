"""Checks of where and how a run happens, before any TensorFlow work: bad setup fails here, naming it.

* `workdir`: not a file, writable (the nearest existing ancestor for a new one).
* `batch_size`: divisible by the number of replicas of the strategy.
"""

from __future__ import annotations

import os

import tensorflow as tf

from framework.config import ConfigError


def workdir(path: str | None) -> None:
    """Checks that `path` can hold the run's files; remote paths (`gs://...`) are not checked.

    Raises:
      NotADirectoryError: `path` is a file.
      PermissionError: `path` (or, for a new one, its nearest existing ancestor) is not writable.
    """
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
    """Checks that `config.batch_size` divides among the strategy's replicas.

    Raises:
      ConfigError: it does not; the message names a multiple that does.
    """
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the {replicas} replicas of "
            f"{type(strategy).__name__}; use a multiple of {replicas}."
        )
