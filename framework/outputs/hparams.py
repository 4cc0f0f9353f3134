"""TensorBoard HParams summaries: `tensorboard --logdir <sweep>` compares runs in its HParams tab.

Each training run writes, in its workdir, its overrides (the `--config.key=`
flags it was given) and a few key config values as an HParams session; its
evaluation scalars (`eval/<metric>`) are the session's metrics. A sweep also
writes the experiment (the swept keys, their values, the `val/` metrics) at its
root. TensorBoard is optional: without it nothing is written.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from absl import logging

KEY_VALUES = (
    "seed",
    "batch_size",
    "epochs",
    "optimizer.name",
    "optimizer.learning_rate",
    "optimizer.schedule",
    "optimizer.weight_decay",
    "precision",
)


def _file_writer(logdir: str):
    import tensorflow as tf  # here: a sweep imports this module without starting TensorFlow until it writes

    return tf.summary.create_file_writer(logdir)


def _api():
    try:
        from tensorboard.plugins.hparams import api
    except ImportError:
        logging.info("tensorboard is not installed: no HParams summary (pip install tensorboard).")
        return None
    return api


def _lookup(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def _scalar(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def hparams_of(config: Any, overrides: Iterable[str] = ()) -> dict[str, bool | int | float | str]:
    """The key config values and the overridden keys of `config`, as HParams values."""
    values = {}
    for path in (*KEY_VALUES, *overrides):
        try:
            values[path] = _scalar(_lookup(config, path))
        except (KeyError, AttributeError):
            continue  # a free-section key this config does not have
    return values


def write_session(workdir: str, config: Any, overrides: Iterable[str] = ()) -> bool:
    """Writes the run's HParams session into `workdir`; returns whether it was written."""
    api = _api()
    if api is None:
        return False
    writer = _file_writer(workdir)
    with writer.as_default():
        api.hparams(hparams_of(config, overrides), trial_id=os.path.basename(os.path.normpath(workdir)))
    writer.close()
    return True


def write_experiment(logdir: str, points: Sequence[Mapping[str, Any]], metric_keys: Iterable[str]) -> bool:
    """Writes the sweep's experiment (swept keys with their values, `val/` metrics) at `logdir`.

    Args:
      logdir: the sweep's directory, parent of the run workdirs.
      points: the runs' overrides.
      metric_keys: logged `val/` keys, shown as the metrics of each run's `eval/` scalars.

    Returns:
      Whether it was written (False without tensorboard).
    """
    api = _api()
    if api is None:
        return False
    swept: dict[str, list] = {}
    for point in points:
        for key, value in point.items():
            values = swept.setdefault(key, [])
            if _scalar(value) not in values:
                values.append(_scalar(value))
    hparams = []
    for key in dict.fromkeys([*swept, *KEY_VALUES]):
        values = swept.get(key, [])
        same_type = values and len({type(v) for v in values}) == 1 and not isinstance(values[0], bool)
        hparams.append(api.HParam(key, api.Discrete(values) if same_type else None))
    metrics = [
        api.Metric(key[len("val/") :], group="eval", display_name=key)
        for key in metric_keys
        if key.startswith("val/")
    ]
    for old in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        os.remove(old)  # one experiment description per sweep directory
    writer = _file_writer(logdir)
    with writer.as_default():
        api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()
    return True
