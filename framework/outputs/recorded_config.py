"""The config a run records in its workdir, and the config later modes start from.

`fit()` writes `workdir/config.json`: the resolved config, with what actually
runs where the trainer overrides the config. When `build_optimizer` is
overridden, `optimizer` holds that optimizer's Keras config (`built_by`,
`class_name`, `config`) instead of the unused `config.optimizer` keys, and
`added_optimizers` the ones registered with `add_optimizer`.

`eval`, `continuous_eval` and `export` on a workdir start from that record
(`for_mode`): the run's model, task, data, seed, precision, optimizer and
checkpoint settings (its best metric), whatever the config file says now; where
and how to run (distribution, batch size, debug limits) comes from the command
line. Command-line overrides go on top, with a warning where they change
something the checkpoints depend on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from framework import config as config_lib
from framework import periods
from framework.config import keys
from framework.config.record_file import FILENAME, load
from framework.config.record_file import retyped as _retyped
from framework.optim import keras_internals

# Keys whose value shapes the variables or the checkpoints' meaning; overriding them for eval warns.
STATE_KEYS = ("model", "task", "data", "seed", "precision", "optimizer", "grad_accum_steps", "checkpoint")


def _optimizer_record(optimizer: keras.optimizers.Optimizer) -> dict:
    inner = keras_internals.inner(optimizer)
    try:
        return keras.optimizers.serialize(inner)
    except Exception as e:  # noqa: BLE001 - a custom optimizer's get_config must not stop training
        return {"class_name": type(inner).__name__, "config": None, "unrecorded": f"{type(e).__name__}: {e}"}


def record(
    config: ml_collections.ConfigDict,
    named_optimizers: list[tuple[str, keras.optimizers.Optimizer]],
    *,
    built_by: str | None = None,
) -> dict:
    """The config as a run uses it: `config.json`'s content.

    Args:
      config: the run's resolved config.
      named_optimizers: (name, optimizer) pairs, the primary one first.
      built_by: the hook that built the primary optimizer when it was not
        `config.optimizer` (its settings are then recorded instead).

    Returns:
      The config as a dict, with the optimizers' own settings where the config does not hold them.
    """
    out = config.to_dict()
    if built_by:
        out["optimizer"] = {"built_by": built_by, **_optimizer_record(named_optimizers[0][1])}
    if len(named_optimizers) > 1:
        out["added_optimizers"] = {name: _optimizer_record(opt) for name, opt in named_optimizers[1:]}
    return out


def write(workdir: str, content: dict) -> None:
    """Writes `workdir/config.json` (atomically: an evaluator may be waiting for it)."""
    path = os.path.join(workdir, FILENAME)
    partial = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(partial, "w") as f:
        json.dump(content, f, indent=2, sort_keys=True, default=str)
    tf.io.gfile.rename(partial, path, overwrite=True)


def start_run(workdir: str | None, config, step: int, run_record: Callable[[], dict]) -> None:
    """The chief, as training starts: notes what the config changes against the workdir's last run
    (and an unused `epochs`), then records this run's config (`run_record()`) in the workdir."""
    if config_lib.unused_epochs(config):
        logging.info(
            "config.train_steps=%d counts this run in steps: config.epochs=%d is unused.",
            config.train_steps,
            config.epochs,
        )
    if workdir:
        tf.io.gfile.makedirs(workdir)
        rerun = periods.rerun_note(load(workdir), config, step)
        if rerun:
            (logging.warning if rerun[1] else logging.info)(rerun[0])
        write(workdir, run_record())


def wait_for(workdir: str, timeout_secs: float, poll_secs: float = 1.0) -> bool:
    """Waits until the run in `workdir` has recorded its config; False after `timeout_secs`."""
    deadline = time.monotonic() + timeout_secs
    path = os.path.join(workdir, FILENAME)
    if not tf.io.gfile.exists(path):
        logging.info("Waiting for the training run to write %s.", path)
    while not tf.io.gfile.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_secs)
    return True


def for_mode(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], workdir: str
) -> ml_collections.ConfigDict:
    """The command line's config with the run's recorded `STATE_KEYS`, then `overrides` on top.

    What the run is (model, task, data, seed, precision, optimizer, checkpoint
    settings) comes from `workdir/config.json`; where and how to run it
    (distribution, batch size, debug limits, XLA) from the command line.

    Args:
      config: the config the command line gives (its file and overrides); returned
        as it is when the workdir has no `config.json`.
      overrides: the command line's `--config.x=` values, path -> value.
      workdir: the run's workdir.

    Returns:
      The config to build the trainer with.
    """
    recorded = load(workdir)
    if recorded is None:
        return config
    like = config.to_dict()
    merged = {**like, **{key: recorded[key] for key in STATE_KEYS if key in recorded}}
    try:
        base = config_lib.resolve(_retyped(merged, like))
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"{os.path.join(workdir, FILENAME)}: {e}") from None
    changed = []
    for path, value in overrides.items():
        before = keys.get(base, path)
        keys.assign(base, path, value)
        if before != value and keys.section_of(path) in STATE_KEYS:
            changed.append(f"--config.{path}={value!r} (the run had {before!r})")
    config_lib.check_values(base)
    logging.info("Starting from the run's recorded config %s.", os.path.join(workdir, FILENAME))
    if changed:
        logging.warning(
            "Overriding what the run's checkpoints were trained with: %s. Restoring may fail, or "
            "evaluate another setting than the run's.",
            "; ".join(changed),
        )
    return base
