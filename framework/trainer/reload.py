"""A finished run's trainer, rebuilt from its workdir: `Trainer.from_workdir`.

    trainer = MyTrainer.from_workdir("runs/x", which="best")
        config  <- runs/x/config.json (what the run was: `framework.config.load`),
                   config.distribution from this process, then `overrides`
        trainer <- MyTrainer(config, workdir="runs/x", **kwargs)
        restore(which): "latest", "best" (by the run's checkpoint.best_metric) or a step

The trainer only reads the workdir until `fit()` is called (which resumes the run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from framework import config as config_lib
from framework.outputs import console, recorded_config


def from_workdir(
    trainer_cls: type,
    workdir: str,
    which: str | int = "latest",
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
):
    """See `framework.Trainer.from_workdir`."""
    from framework.sweeps import processes as sweeps  # the --config.key= checks live with the command line

    if not tf.io.gfile.isdir(workdir):
        raise FileNotFoundError(
            f"{trainer_cls.__name__}.from_workdir: {workdir} is not a directory; give the workdir a "
            "training run wrote (it holds config.json and checkpoints/)."
        )
    recorded = config_lib.load(workdir)
    here = config_lib.defaults().distribution
    if recorded.distribution != here:
        logging.info(
            "from_workdir: running on this process's devices (config.distribution defaults), not as the "
            "run did (%s); overrides={'distribution.strategy': ...} chooses otherwise.",
            {k: v for k, v in recorded.distribution.items() if here[k] != v},
        )
    recorded.distribution = here
    overrides = dict(overrides or {})
    config = sweeps.apply(recorded, overrides, f"{trainer_cls.__name__}.from_workdir({workdir!r}) overrides")
    changed = [
        f"{path}={value!r} (the run had {_get(recorded, path)!r})"
        for path, value in overrides.items()
        if path.split(".")[0] in recorded_config.STATE_KEYS and _get(recorded, path) != value
    ]
    if changed:
        logging.warning(
            "from_workdir: overriding what the run's checkpoints were trained with: %s. Restoring may "
            "fail, or evaluate another setting than the run's.",
            "; ".join(changed),
        )
    trainer = trainer_cls(config, workdir=workdir, **kwargs)
    step = trainer.restore(which)
    if step is None:
        raise FileNotFoundError(
            f"{trainer_cls.__name__}.from_workdir: no checkpoint in {workdir}/checkpoints to restore "
            "(the run saved none: a fast_dev_run, or it stopped before its first save)."
        )
    console.show_info()
    logging.info("from_workdir: restored checkpoint %s of %s: step %d.", repr(which), workdir, step)
    return trainer


def _get(config, path: str) -> Any:
    for part in path.split("."):
        if part not in config:
            return None
        config = config[part]
    return config
